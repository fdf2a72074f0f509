"""``iqadef verify RUN_DIR``: recompute stored cells from scratch and compare them with what is stored.

A result table is worth what it takes to reproduce it. This picks ``cells`` stored successful cells at
random (``seed``), rebuilds the grid from the registry the run recorded in ``run.json`` and computes
those cells again with nothing reused: the images are read from the dataset folder, x_a is computed by
the attack again (``cache/adv`` is not read), the seeds are the run's (they follow from the config, the
plugins and the batch's files, so randomised plugins repeat their draws). Nothing in the run folder is
written. A cell *matches* when every f value and every per-image score agrees within a float32
tolerance (``rtol``, ``atol``); otherwise it is listed with the size of each difference.

Before recomputing, each cell's image is checked against what was stored with it: an image file replaced
under the same name (its sha256 differs) or a batch that changed (images added, removed or replaced
before it) means the stored cell is not what the folder gives now; both are mismatches.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import IqadefError
from ..plugins import PluginRegistry, get_registry
from ..registry import parse_run_config
from ..weights import fetch_missing
from .local import execute_local
from .plan import Unit, batch_keys, grid_defences
from .worker import UnitResult, Worker

DEFAULT_CELLS = 20
#: Relative and absolute tolerance: a recomputation on the same machine is bit-identical; these leave
#: room for float32 sums taken in another order (another thread count or device).
RTOL = 1e-4
ATOL = 1e-6
VALUE_COLUMNS = ("f_clean", "f_adv", "f_def_clean", "f_def_adv")


@dataclass
class Verdict:
    """The outcome of one ``iqadef verify``."""

    seed: int
    candidates: int
    checked: int = 0
    matched: int = 0
    #: One entry per differing cell: (``metric / attack / defence / image``, what differs).
    mismatches: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def close(stored: float | None, recomputed: float | None, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Equal within tolerance; NaN (stored as NULL) equals NaN, inf equals the same inf."""
    a = math.nan if stored is None else float(stored)
    b = math.nan if recomputed is None else float(recomputed)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _difference(name: str, stored: Any, recomputed: Any) -> str:
    try:
        a, b = float(stored), float(recomputed)
        diff = abs(a - b)
        rel = f", {diff / max(abs(a), abs(b)):.2%}" if math.isfinite(diff) and max(abs(a), abs(b)) > 0 else ""
        return f"{name}: stored {a:.6g}, recomputed {b:.6g} (|diff| {diff:.3g}{rel})"
    except (TypeError, ValueError):
        return f"{name}: stored {stored!r}, recomputed {recomputed!r}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IqadefError(f"{path}: missing; is {path.parent} a run folder of `iqadef run`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IqadefError(f"{path}: cannot be read ({exc}); run the registry again to write it") from None
    if not isinstance(data, dict) or not isinstance(data.get("registry"), dict):
        raise IqadefError(f"{path}: holds no registry; run the registry again with this iqadef to write it")
    if not data.get("registry_file"):
        raise IqadefError(f"{path}: written by an older iqadef (no `registry_file`); run the registry again "
                          f"with this iqadef (it recomputes cells that lack an image hash), then verify")
    return data


def _stored_rows(path: Path) -> list[dict[str, Any]]:
    """Every successful stored row, read-only (a run may be writing beside us)."""
    if not path.is_file():
        raise IqadefError(f"{path}: no result store; run `iqadef run` first")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute("SELECT * FROM cells WHERE status = 'ok'")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise IqadefError(f"{path}: cannot be read ({exc}); see `iqadef run`'s advice for a damaged store") from None
    return rows


def verify_run(run_dir: Path, cells: int = DEFAULT_CELLS, seed: int | None = None, *,
               registry: PluginRegistry | None = None, rtol: float = RTOL, atol: float = ATOL) -> Verdict:
    """Recompute ``cells`` random stored cells of ``run_dir`` and compare them (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IqadefError(f"{run_dir}: not a folder; give the run folder of `iqadef run` (its `output`)")
    if cells < 1:
        raise IqadefError(f"--cells {cells}: must be at least 1")
    info = _read_json(run_dir / "run.json")
    registry = registry or get_registry()
    config = parse_run_config(dict(info["registry"]), Path(info["registry_file"]), registry=registry)
    config.output, config.executor = run_dir, "local"
    dataset = config.open_dataset(limit=info.get("limit"))

    index = {kind: {p.key(): i for i, p in enumerate(plugins)} for kind, plugins in
             (("metric", config.metrics), ("attack", config.attacks), ("defence", grid_defences(config)))}
    rows = [r for r in _stored_rows(run_dir / "results.sqlite")
            if r["metric_key"] in index["metric"] and r["attack_key"] in index["attack"]
            and r["defence_key"] in index["defence"]]
    if not rows:
        raise IqadefError(f"{run_dir}: no successful cell of the registry in run.json is stored; nothing to verify")
    rows.sort(key=lambda r: (r["metric"], r["attack"], r["defence"], r["image"]))
    seed = secrets.randbelow(2**31) if seed is None else seed
    chosen = random.Random(seed).sample(rows, min(cells, len(rows)))
    verdict = Verdict(seed=seed, candidates=len(rows), checked=len(chosen))

    batches = dataset.batches(config.batch_size)
    where = {item.name: (b, i, key) for b, items in enumerate(batches)
             for i, (item, key) in enumerate(zip(items, batch_keys(items)))}
    todo: dict[tuple[int, int, int], set[int]] = {}
    expected: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in chosen:
        label = " / ".join(str(row[c]) for c in ("metric", "attack", "defence", "image"))
        found = where.get(row["image"])
        if found is None:
            verdict.mismatches.append((label, f"image {row['image']!r} is no longer in {config.images}"))
            continue
        b, i, key = found
        item = batches[b][i]
        if row.get("image_sha256") and row["image_sha256"] != item.sha256:
            verdict.mismatches.append((label, f"the image file changed since this cell was computed (stored sha256 "
                                              f"{row['image_sha256'][:12]}..., file now {item.sha256[:12]}...): the "
                                              f"stored values are of the old image; run the registry again"))
            continue
        if row.get("batch_key") and row["batch_key"] != key:
            verdict.mismatches.append((label, "the images batched with it changed since it was computed (added, "
                                              "removed or replaced before it), so its seeds differ now; run the "
                                              "registry again to recompute it"))
            continue
        m, a = index["metric"][row["metric_key"]], index["attack"][row["attack_key"]]
        d = index["defence"][row["defence_key"]]
        todo.setdefault((m, a, b), set()).add(d)
        expected[(row["metric_key"], row["attack_key"], row["defence_key"], row["image"])] = {**row, "label": label}

    if todo:
        units = [Unit(m, a, b, tuple(sorted(ds))) for (m, a, b), ds in sorted(todo.items())]
        fetch_missing(config.plugins())
        threads = torch.get_num_threads()
        if info.get("torch_threads"):
            torch.set_num_threads(int(info["torch_threads"]))  # sums in the run's order
        try:
            worker = Worker(config, dataset, run_dir, lambda key: None, config.torch_device(), registry)
            results: list[UnitResult] = [result for _, result in execute_local(worker, units, config.unit_timeout)]
        finally:
            torch.set_num_threads(threads)
        for result in results:
            for new in result.rows:
                old = expected.pop((new["metric_key"], new["attack_key"], new["defence_key"], new["image"]), None)
                if old is None:
                    continue  # a cell of the same batch that was not chosen
                problems = _compare(old, new, rtol, atol)
                if problems:
                    verdict.mismatches.append((old["label"], "; ".join(problems)))
                else:
                    verdict.matched += 1
        for old in expected.values():
            verdict.mismatches.append((old["label"], "not recomputed (its unit returned no row for it)"))
    return verdict


def _compare(stored: dict[str, Any], new: dict[str, Any], rtol: float, atol: float) -> list[str]:
    if new["status"] != "ok":
        return [f"recomputing it failed: {new['error']}"]
    problems = [_difference(c, stored[c], new[c]) for c in VALUE_COLUMNS if not close(stored[c], new[c], rtol, atol)]
    try:
        old_scores = json.loads(stored.get("scores") or "{}")
    except json.JSONDecodeError:
        return problems + [f"scores: the stored JSON is damaged ({str(stored.get('scores'))[:40]!r})"]
    for name in sorted(set(old_scores) | set(new["scores"])):
        if name not in old_scores or name not in new["scores"]:
            problems.append(f"{name}: {'not stored' if name not in old_scores else 'not computed now'}")
        elif not close(old_scores[name], new["scores"][name], rtol, atol):
            problems.append(_difference(name, old_scores[name], new["scores"][name]))
    return problems


__all__ = ["DEFAULT_CELLS", "Verdict", "close", "verify_run"]
