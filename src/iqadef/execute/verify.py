"""``iqadef verify RUN_DIR``: check every stored cell against the run's config, dataset and files, and
recompute a sample of them from scratch.

A result table is worth what it takes to reproduce it. Every successful stored cell of the registry recorded
in ``run.json`` is read through the store's reader (:func:`~iqadef.store.results.read_cells`, as ``iqadef
export`` reads them) and checked without recomputing:

* its row checksum (a value edited after it was written fails it);
* its labels, parameters and attack mode against what the config gives for its plugin keys, and its MOS
  against the dataset's (a row relabelled to another defence, with its checksum recomputed, is caught);
* its image: still in the dataset folder, same sha256, same batch (else the stored cell is not what the
  folder gives now);
* its files: the x_a file is one the store recorded, inside the run folder, a regular file whose sha256 is
  the recorded one; the example image, when it has one, exists.

Then ``cells`` of them, picked at random (``seed``), are computed again with nothing reused: the images are
read from the dataset folder, x_a is computed by the attack again (``cache/adv`` is not read), the seeds are
the run's (they follow from the config, the plugins and the batch's files, so randomised plugins repeat their
draws). Nothing in the run folder is written. A recomputed cell *matches* when every f value and every
per-image score agrees within a float32 tolerance (``rtol``, ``atol``), its x_a and example paths are the
ones its keys give, and it passed the checks above; otherwise it is listed with what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iqadef.core.errors import IqadefError
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.core.weights import fetch_missing
from iqadef.execute.execution import ExecutionContext
from iqadef.execute.local import execute_local
from iqadef.execute.progress import _progress
from iqadef.execute.recorded import open_grid, read_run_info
from iqadef.execute.worker import UnitResult
from iqadef.plan.grid import Unit, batch_keys, cell_row, grid_defences
from iqadef.store.artifacts import adv_file
from iqadef.store.results import CHECKSUM_ERROR, KEY_COLUMNS, StoredCells, read_cells, stored_form

DEFAULT_CELLS = 20
#: Relative and absolute tolerance: a recomputation on the same machine is bit-identical; these leave
#: room for float32 sums taken in another order (another thread count or device).
RTOL = 1e-4
ATOL = 1e-6
VALUE_COLUMNS = ("f_clean", "f_adv", "f_def_clean", "f_def_adv")
#: What a cell's config and dataset determine without computing anything (plan.cell_row).
DESCRIBED_COLUMNS = (
    "metric",
    "attack",
    "defence",
    "metric_params",
    "attack_params",
    "defence_params",
    "adaptive",
    "mos",
)
#: Files a recomputed cell names by its keys.
PATH_COLUMNS = ("adv_path", "example_path")


@dataclass
class Verdict:
    """The outcome of one ``iqadef verify``."""

    seed: int
    candidates: int
    checked: int = 0
    matched: int = 0
    #: One entry per differing cell: (``metric / attack / defence / image``, what differs).
    mismatches: list[tuple[str, str]] = field(default_factory=list)
    #: How many of :attr:`mismatches` are cells that were not recomputed (found by the checks of every row).
    unsampled: int = 0

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


class _FileCheck:
    """The run folder's cached files as the store recorded them; each file hashed once."""

    def __init__(self, run_dir: Path, stored: StoredCells):
        self.root = run_dir.resolve()
        self.run_dir = run_dir
        self.recorded = {path: (key, sha) for key, (path, sha) in stored.artifacts.items()}
        self._digest: dict[str, str | None] = {}

    def _regular(self, rel: str) -> str | None:
        """Why ``rel`` is not a regular file inside the run folder, or None."""
        path = self.run_dir / rel
        try:
            if not path.resolve().is_relative_to(self.root) or Path(rel).is_absolute():
                return "leads out of the run folder"
            mode = path.stat().st_mode
        except FileNotFoundError:
            return "does not exist"
        except (OSError, RuntimeError) as exc:
            return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
        return None if stat.S_ISREG(mode) else "is not a regular file"

    def adv_problem(self, rel: str | None) -> str | None:
        if not rel:
            return "adv_path: empty (a successful cell names its x_a file)"
        if rel not in self.recorded:
            return f"adv_path {rel!r}: no file of that name is recorded in the store's artifacts"
        key, sha = self.recorded[rel]
        if rel != adv_file(key):
            return f"adv_path {rel!r}: is not the file name of its recorded key {key[:12]}..."
        why = self._regular(rel)
        if why is not None:
            return f"adv_path {rel!r}: {why}; resume the run to write it again"
        if rel not in self._digest:
            try:
                self._digest[rel] = hashlib.sha256((self.run_dir / rel).read_bytes()).hexdigest()
            except OSError:
                self._digest[rel] = None
        if self._digest[rel] != sha:
            return (
                f"adv_path {rel!r}: its sha256 is not the one the store recorded (the file was replaced or "
                f"damaged); resume the run to recompute it"
            )
        return None

    def example_problem(self, rel: str | None) -> str | None:
        if not rel:
            return None
        why = self._regular(rel)
        return None if why is None else f"example_path {rel!r}: {why}; resume the run to write it again"


def verify_run(
    run_dir: Path,
    cells: int = DEFAULT_CELLS,
    seed: int | None = None,
    *,
    plugins: InstalledPlugins | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    progress: bool | None = False,
) -> Verdict:
    """Check every stored cell of ``run_dir`` and recompute ``cells`` random ones (see the module docstring).
    ``progress``: as for ``iqadef run`` (a bar on a terminal, plain lines otherwise; False: none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IqadefError(f"{run_dir}: not a folder; give the run folder of `iqadef run` (its `output`)")
    if cells < 1:
        raise IqadefError(f"--cells {cells}: must be at least 1")
    info = read_run_info(run_dir)
    plugins = plugins or installed_plugins()
    config, dataset = open_grid(run_dir, info, plugins)
    stored = read_cells(run_dir)

    index = {
        kind: {p.key(): i for i, p in enumerate(entries)}
        for kind, entries in (
            ("metric", config.metrics),
            ("attack", config.attacks),
            ("defence", grid_defences(config)),
        )
    }
    candidates = [
        (row, ok)
        for row, ok in zip(stored.rows, stored.intact)
        if row.get("status") == "ok"
        and row.get("metric_key") in index["metric"]
        and row.get("attack_key") in index["attack"]
        and row.get("defence_key") in index["defence"]
    ]
    if not candidates:
        raise IqadefError(f"{run_dir}: no successful cell of the registry in run.json is stored; nothing to verify")
    candidates.sort(key=lambda c: tuple(str(c[0].get(k)) for k in ("metric", "attack", "defence", "image")))
    seed = secrets.randbelow(2**31) if seed is None else seed
    chosen = {id(row) for row, _ in random.Random(seed).sample(candidates, min(cells, len(candidates)))}

    batches = dataset.batches(config.batch_size)
    where = {
        item.name: (b, i, key)
        for b, items in enumerate(batches)
        for i, (item, key) in enumerate(zip(items, batch_keys(items)))
    }
    files = _FileCheck(run_dir, stored)
    problems: dict[tuple[str, ...], list[str]] = {}  # per cell (its keys): what is wrong with it
    labels: dict[tuple[str, ...], str] = {}
    todo: dict[tuple[int, int, int], set[int]] = {}
    expected: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row, intact in candidates:
        cell = tuple(row[c] for c in KEY_COLUMNS)
        labels[cell] = " / ".join(str(row.get(c)) for c in ("metric", "attack", "defence", "image"))
        found = problems.setdefault(cell, [])
        if not intact:
            found.append(
                f"the row fails its checksum: {CHECKSUM_ERROR}; run the registry again (resume) to recompute it"
            )
        for problem in (files.adv_problem(row.get("adv_path")), files.example_problem(row.get("example_path"))):
            if problem:
                found.append(problem)
        m, a = index["metric"][row["metric_key"]], index["attack"][row["attack_key"]]
        d = index["defence"][row["defence_key"]]
        place = where.get(row["image"])
        if place is None:
            found.append(f"image {row['image']!r} is no longer in {config.images}")
            continue
        b, i, key = place
        item = batches[b][i]
        described = stored_form(cell_row(config, Unit(m, a, b, ()), d, item, key))
        for column in DESCRIBED_COLUMNS:
            if row.get(column) != described[column]:
                source = "the dataset" if column == "mos" else "run.json's registry"
                what = "this image" if column == "mos" else "its keys"
                found.append(f"{column}: stored {row.get(column)!r}, {source} gives {described[column]!r} for {what}")
        if row.get("image_sha256") and row["image_sha256"] != item.sha256:
            found.append(
                f"the image file changed since this cell was computed (stored sha256 "
                f"{row['image_sha256'][:12]}..., file now {item.sha256[:12]}...): the stored values are "
                f"of the old image; run the registry again"
            )
            continue
        if row.get("batch_key") and row["batch_key"] != key:
            found.append(
                "the images batched with it changed since it was computed (added, removed or replaced "
                "before it), so its seeds differ now; run the registry again to recompute it"
            )
            continue
        if id(row) in chosen:
            todo.setdefault((m, a, b), set()).add(d)
            expected[cell] = row

    recomputed: set[tuple[str, ...]] = set()
    if todo:
        units = [Unit(m, a, b, tuple(sorted(ds))) for (m, a, b), ds in sorted(todo.items())]
        fetch_missing(config.plugins())
        threads = torch.get_num_threads()
        if info.get("torch_threads"):
            torch.set_num_threads(int(info["torch_threads"]))  # sums in the run's order
        try:
            results: list[UnitResult] = []
            cells_todo = sum(len(u.defences) * len(batches[u.batch]) for u in units)
            with _progress(progress, len(units), cells_todo, what="verify", cell_label="cells recomputed") as bar:
                context = ExecutionContext(
                    config, dataset, run_dir, config.torch_device(), plugins, cached=False, on_cells=bar.cell
                )
                for _, result in execute_local(context, units):
                    bar.unit(len(result.rows))
                    results.append(result)
        finally:
            torch.set_num_threads(threads)
        for result in results:
            for new in result.rows:
                cell = tuple(new[c] for c in KEY_COLUMNS)
                old = expected.pop(cell, None)
                if old is None:
                    continue  # a cell of the same batch that was not chosen
                recomputed.add(cell)
                problems[cell][:0] = _compare(old, new, rtol, atol)  # the values first, then the row's checks
        for cell in expected:
            problems[cell].insert(0, "not recomputed (its unit returned no row for it)")

    sampled = {tuple(row[c] for c in KEY_COLUMNS) for row, _ in candidates if id(row) in chosen}
    verdict = Verdict(seed=seed, candidates=len(candidates), checked=len(sampled))
    for cell, found in problems.items():
        if found:
            verdict.mismatches.append((labels[cell], "; ".join(found)))
            verdict.unsampled += cell not in sampled
        elif cell in recomputed:
            verdict.matched += 1
    return verdict


def _compare(stored: dict[str, Any], new: dict[str, Any], rtol: float, atol: float) -> list[str]:
    if new["status"] != "ok":
        return [f"recomputing it failed: {new['error']}"]
    problems = [_difference(c, stored[c], new[c]) for c in VALUE_COLUMNS if not close(stored[c], new[c], rtol, atol)]
    problems += [
        f"{c}: stored {stored.get(c)!r}, its keys give {new.get(c) or ''!r}"
        for c in PATH_COLUMNS
        if (stored.get(c) or "") != (new.get(c) or "")
    ]
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
