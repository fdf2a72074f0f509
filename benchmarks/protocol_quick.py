"""The robustness protocol's cost (docs/evaluation.md): the default registry with ``protocol: quick`` on the
bundled images, and the share of it that is the metric's own forward+backward.

    python benchmarks/protocol_quick.py [--registry registry.yaml] [--level quick] [--output DIR]
                                        [--threads 1] [--out benchmarks/results/protocol_quick.json]

Runs (or resumes: an ``--output`` folder that already holds the study's cells computes only what is left) the
grid with ``run_grid`` and records wall time and the process CPU time (on a machine shared with other jobs,
wall time mostly measures the wait for a core; CPU time on one thread is what a quiet core would take), the
load average before and after, the cells computed and skipped, and the attack work ``iqadef plan`` counts.
``metric_fwd_bwd_share`` estimates how much of the CPU time is tiny-iqa's own forward+backward: its timed
cost per image and step (median of 5, same process) times the gradient steps the plan counts, over the CPU
time (an estimate: EOT draws and defences' backward passes are in the steps, queries of a black-box attack
are forwards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import loadavg, machine, set_threads  # noqa: E402


def fwd_bwd_seconds(side: int = 256, batch: int = 7, repeats: int = 5) -> tuple[float, float]:
    """tiny-iqa's CPU seconds per image: (forward+backward, forward), median of ``repeats``."""
    from iqadef.plugins.metrics.embedded import TinyIQA

    metric = TinyIQA().load("cpu")
    x = torch.rand(batch, 3, side, side)
    both, fwd = [], []
    for _ in range(repeats):
        images = x.clone().requires_grad_(True)
        start = time.process_time()
        metric.score(images).sum().backward()
        both.append((time.process_time() - start) / batch)
        start = time.process_time()
        with torch.no_grad():
            metric.score(x)
        fwd.append((time.process_time() - start) / batch)
    return statistics.median(both), statistics.median(fwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=HERE.parent / "registry.yaml")
    parser.add_argument("--level", default="quick")
    parser.add_argument("--output", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "protocol_quick.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    import tempfile

    from iqadef.core.plugins import installed_plugins
    from iqadef.config.registry import load_yaml, parse_run_config
    from iqadef.execute import run_grid
    from iqadef.plan.grid import plan_units, plugin_calls
    from iqadef.store.results import ResultStore

    data = load_yaml(args.registry)
    data["protocol"] = args.level
    with tempfile.TemporaryDirectory(prefix="iqadef-protocol-") as tmp:
        data["output"] = str(args.output or Path(tmp) / "run")
        config = parse_run_config(data, args.registry, plugins=installed_plugins())
        dataset = config.open_dataset()
        finished: set = set()
        if (config.output / "results.sqlite").is_file():
            store = ResultStore(config.output)
            try:
                finished = store.finished()
            finally:
                store.close()
        calls = plugin_calls(config, dataset, plan_units(config, dataset, finished))
        load_before = loadavg()
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = run_grid(config, progress=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        load_after = loadavg()
        per_step, per_forward = fwd_bwd_seconds()
        metric_seconds = calls["attack_steps"] * per_step + calls["metric_scores"] * per_forward
        result = {
            "benchmark": "protocol_quick", "level": args.level, "registry": str(args.registry),
            "images": len(dataset), "defences": len(config.defences),
            "attacks": [e.label for e in config.attacks], "cells": summary.total,
            "cells_computed": summary.computed, "cells_skipped": summary.skipped, "failed": summary.failed,
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "torch_threads": threads,
            "load_before": load_before, "load_after": load_after, "plugin_calls": calls,
            "tiny_iqa_fwd_bwd_cpu_s_per_image": per_step, "tiny_iqa_fwd_cpu_s_per_image": per_forward,
            "metric_fwd_bwd_share": round(metric_seconds / cpu, 3) if cpu else None,
            "machine": machine(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("cells_computed", "wall_s", "cpu_s", "load_before", "load_after",
                                             "metric_fwd_bwd_share")}))


if __name__ == "__main__":
    main()
