"""The default grid's wall time split into what it is spent on, against its cost floor (issue 16, target 1).

    python benchmarks/floor.py                 # the default grid (registry.yaml: 2240 cells, tiny-iqa, CPU)
    python benchmarks/floor.py --quick         # a 2-image, 2-attack, 3-defence grid: a smoke run
    python benchmarks/floor.py --out /tmp/floor.json --threads 2

One in-process run of the grid (``run_grid`` with ``fresh=True``, then ``write_report``, as ``iqadef run``
does), with timers around the public methods of the plugins and around the store, the PNG codec and the
driver's planning and export functions, not inside the worker, so the split means the same before and
after the worker changes. A call made while another timed call is running counts for the outer one
(the metric forwards and defences inside an attack are the attack's work). Parts:

* ``attack``: ``Attack.run`` (its forward and backward passes included);
* ``defence``: ``Defence.purify`` outside attacks;
* ``metric``: ``Metric.score`` outside attacks (f(x), f(x_a), f(D(x)), f(D(x_a)));
* ``measures``: ``ImageScore.compute`` and the pair measures (PSNR, SSIM, ...) of ``_measures``;
* ``storage``: ``ResultStore.write_cells``, ``atomic_write_bytes`` and the run folder's manifest;
* ``png_io``: the PNG codec of x_a and examples (``png_bytes``, ``read_png``), image decoding (``Dataset.load``);
* ``plugin_setup``: ``Plugin.load`` (weights, networks);
* ``planning``: the dataset scan (hashes), ``run.json``, the plan, the finished-cell lookup;
* ``export_report``: ``results.parquet/csv``, the summary table, ``write_report``;
* ``other``: the rest of the wall time (the worker's bookkeeping, the input guard, contract checks).

The floor is the model work no runner can avoid: ``attack + defence + metric``. Goals: total <= 1.25 x
floor, measures <= 15% of total, storage + PNG I/O <= 5% of total.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PARTS = ["attack", "defence", "metric", "measures", "storage", "png_io", "plugin_setup", "planning",
         "export_report"]
FLOOR_PARTS = ("attack", "defence", "metric")
GOALS = {"total_over_floor": 1.25, "measures_share": 0.15, "storage_io_share": 0.05}


class Split:
    """Wall and thread-CPU seconds per part. Nested timed calls count for the outermost one (per thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.by_owner: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, part: str, fn: Callable, owner: str) -> Callable:
        split = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            local = split._local
            if getattr(local, "depth", 0):
                local.depth += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    local.depth -= 1
            local.depth = 1
            start, start_cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - start, time.thread_time() - start_cpu
                local.depth = 0
                with split._lock:
                    split.seconds[part] += wall
                    split.cpu[part] += cpu
                    split.calls[part] += 1
                    split.by_owner[part][owner] += wall

        timed.__floor_timed__ = True  # type: ignore[attr-defined]
        return timed


class Patches:
    """Monkeypatches undone on exit: a class attribute, or a function under every name that binds it."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.undo: list[tuple[Any, str, Any]] = []

    def method(self, cls: type, name: str, part: str) -> None:
        fn = cls.__dict__.get(name)
        if fn is None or not callable(fn) or getattr(fn, "__floor_timed__", False):
            return
        self.undo.append((cls, name, fn))
        setattr(cls, name, self.split.wrap(part, fn, cls.__name__))

    def function(self, fn: Callable, part: str) -> None:
        """Rebinds ``fn`` in every iqadef (and benchmark) module that holds it (``from x import fn`` too)."""
        timed = self.split.wrap(part, fn, getattr(fn, "__qualname__", str(fn)))
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "") or ""
            if not (name.startswith("iqadef") or name == "__main__"):
                continue
            for attr, value in list(vars(module).items()):
                if value is fn:
                    self.undo.append((module, attr, fn))
                    setattr(module, attr, timed)

    def __enter__(self) -> "Patches":
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, fn in reversed(self.undo):
            setattr(owner, name, fn)
        self.undo.clear()


def instrument(patches: Patches, plugins) -> None:
    """Timers on the plugins' public methods and the runner's store, PNG, planning and export functions."""
    import importlib

    from iqadef.core import base, compose
    from iqadef.core.dataset import Dataset
    from iqadef.report import write_report
    from iqadef.store.rundir import RunFolder
    from iqadef.execute import driver
    from iqadef.plan import grid as plan
    from iqadef.store import artifacts
    from iqadef.store import results as store

    # every class on the way up (zhang-ssim's `run` lives in a base class no registry entry names)
    classes = {kind: list(dict.fromkeys(k for n in plugins.names(kind) for k in plugins.get(kind, n).__mro__
                                        if k is not object))
               for kind in ("metrics", "attacks", "defences", "scores")}
    for cls in classes["metrics"] + [base.Metric]:
        patches.method(cls, "score", "metric")
    for cls in classes["attacks"]:
        patches.method(cls, "run", "attack")
    for cls in classes["defences"] + [compose.Compose, base.Defence]:
        patches.method(cls, "purify", "defence")
    for cls in classes["scores"]:
        patches.method(cls, "compute", "measures")
    from iqadef.core.cells import CellBatch

    for name, value in list(vars(CellBatch).items()):
        if not name.startswith("_") and callable(value) and name != "changed_measures":
            patches.method(CellBatch, name, "measures")
    try:
        measures = importlib.import_module("iqadef.plugins.scores._measures")
    except ImportError:
        measures = None
    if measures is not None:
        for name, value in list(vars(measures).items()):
            if (callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == measures.__name__
                    and not isinstance(value, type)):
                patches.function(value, "measures")
    for cls in [base.Plugin, compose.Compose] + [c for k in classes.values() for c in k]:
        patches.method(cls, "load", "plugin_setup")

    patches.method(store.ResultStore, "write_cells", "storage")
    patches.method(RunFolder, "record", "storage")
    patches.function(store.atomic_write_bytes, "storage")

    patches.function(artifacts.png_bytes, "png_io")
    patches.function(artifacts.read_png, "png_io")
    patches.method(Dataset, "load", "png_io")

    patches.method(Dataset, "__init__", "planning")
    patches.method(store.ResultStore, "__init__", "planning")
    patches.method(store.ResultStore, "finished", "planning")
    patches.method(plan.GridIndex, "__init__", "planning")
    for fn in (plan.run_info, plan.plan_units, plan.reuse_renamed, driver.fetch_missing):
        patches.function(fn, "planning")

    patches.method(store.ResultStore, "dataframe", "export_report")
    for fn in (store.export_tables, driver.summary_table, write_report):
        patches.function(fn, "export_report")


# ------------------------------------------------------------------------------------------------
def default_config(output: Path, plugins):
    from iqadef.config.registry import load_run_config

    config = load_run_config(ROOT / "registry.yaml", plugins=plugins, overrides={"device": "cpu"})
    config.output = output
    return config, None


def quick_config(output: Path, plugins):
    """2 images, FGSM and a 2-step I-FGSM, 3 defences (12 cells): seconds; the figures mean nothing."""
    from iqadef.config.registry import parse_run_config

    data = {"dataset": {"images": "builtin"}, "device": "cpu", "batch_size": 2, "seed": 0, "examples": 1,
            "metrics": ["tiny-iqa"], "attacks": ["fgsm", {"name": "ifgsm", "iters": 2}],
            "defences": ["no-defence", "flip", {"name": "jpeg", "quality": 50}], "output": str(output)}
    return parse_run_config(data, ROOT / "quick-floor.yaml", plugins=plugins), 2


def measure(config, limit: int | None, plugins) -> dict[str, Any]:
    from iqadef.report import write_report
    from iqadef.execute import run_grid

    split = Split()
    with Patches(split) as patches:
        instrument(patches, plugins)
        # look the entry points up after patching, so the driver's own references are the timed ones
        from iqadef import report as report_pkg
        from iqadef.execute import driver

        load_before = os.getloadavg()
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = driver.run_grid(config, fresh=True, limit=limit, progress=False)
        report_error = None
        try:  # a broken report must not throw away the grid's split (its time is still counted)
            report_pkg.write_report(summary.run_dir)
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON
            report_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        total = time.perf_counter() - start
        total_cpu = time.process_time() - start_cpu
        load_after = os.getloadavg()
    del run_grid, write_report
    parts = {p: split.seconds.get(p, 0.0) for p in PARTS}
    named = sum(parts.values())
    parts["other"] = total - named
    floor = sum(parts[p] for p in FLOOR_PARTS)
    ratios = {
        "total_over_floor": total / floor if floor else float("inf"),
        "measures_share": parts["measures"] / total,
        "storage_io_share": (parts["storage"] + parts["png_io"]) / total,
        "other_share": parts["other"] / total,
    }
    return {
        "cells": summary.total, "computed": summary.computed, "failed": summary.failed,
        "total_s": total, "total_cpu_s": total_cpu, "floor_s": floor, "named_parts_s": named,
        "parts_s": parts, "parts_share": {p: v / total for p, v in parts.items()},
        "parts_cpu_s": {p: split.cpu.get(p, 0.0) for p in PARTS},
        "calls": {p: split.calls.get(p, 0) for p in PARTS},
        "by_plugin_s": {p: dict(sorted(((k, round(v, 4)) for k, v in split.by_owner[p].items()),
                                       key=lambda kv: -kv[1])) for p in PARTS if p in split.by_owner},
        "ratios": ratios, "goals": GOALS,
        "met": {k: ratios[k] <= v for k, v in GOALS.items()},
        "loadavg_before": load_before, "loadavg_after": load_after, "report_error": report_error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 12-cell grid (smoke run; figures meaningless)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/floor.json; floor_quick.json with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the run folder goes (default: a temp dir)")
    args = parser.parse_args(argv)

    from iqadef.core.plugins import installed_plugins

    torch.set_num_threads(args.threads)
    plugins = installed_plugins()
    out = args.out or HERE / "results" / ("floor_quick.json" if args.quick else "floor.json")
    with tempfile.TemporaryDirectory(prefix="iqadef-floor-", dir=args.workdir) as tmp:
        make = quick_config if args.quick else default_config
        config, limit = make(Path(tmp) / "run", plugins)
        result = measure(config, limit, plugins)
    result.update({
        "benchmark": "floor", "quick": args.quick,
        "grid": "quick (tiny-iqa x fgsm, ifgsm[iters=2] x no-defence, flip, jpeg[quality=50]; 2 images)"
        if args.quick else "registry.yaml (default grid)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    r = result
    print(f"{r['cells']} cells in {r['total_s']:.1f} s (CPU {r['total_cpu_s']:.1f} s), floor {r['floor_s']:.1f} s; "
          f"load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f}")
    for part, seconds in r["parts_s"].items():
        print(f"  {part:14s} {seconds:8.2f} s  {100 * r['parts_share'][part]:5.1f}%  ({r['calls'].get(part, '-')} calls)")
    for key, goal in GOALS.items():
        print(f"  {key:18s} {r['ratios'][key]:.3f}  goal <= {goal}  {'met' if r['met'][key] else 'MISSED'}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
