"""Plan: the grid's cells, their identity (plugins, image content, batch) and the work units still to do.

A *work unit* is (metric, attack, batch); its rows are written in one transaction, so a killed run resumes
at the first unfinished unit and ends with exactly the table of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from iqadef._version import __version__
from iqadef.analysis.scores import recorded_columns
from iqadef.config.registry import AttackEntry, RunConfig
from iqadef.core.base import Defence
from iqadef.core.dataset import Dataset, ImageItem
from iqadef.plan.trained import fine_tuning
from iqadef.store.artifacts import _hash
from iqadef.store.results import KEY_COLUMNS, ResultStore


@dataclass(frozen=True)
class Unit:
    """One work unit: a metric, an attack and a batch of images, for the defences still to do."""

    metric: int
    attack: int
    batch: int
    defences: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"{self.metric}/{self.attack}/{self.batch}"


def grid_defences(config: RunConfig) -> list:
    """The grid's defence axis: the defences, then the certified defences (``certified:``, docs/certified.md).
    A unit's defence index ``d`` at or past ``len(config.defences)`` is certified defence
    ``d - len(config.defences)``."""
    return [*config.defences, *config.certified]


@dataclass(frozen=True)
class GridSize:
    """The grid's axes, its cells and how many of them the planned units compute: what ``iqadef plan`` and
    the run's opening line report (one count for both, certified defences on the defence axis)."""

    images: int
    metrics: int
    attacks: int
    defences: int  #: the defence axis (grid_defences): the defences, then the certified defences
    todo: int

    @property
    def cells(self) -> int:
        return self.images * self.metrics * self.attacks * self.defences

    @property
    def done(self) -> int:
        return self.cells - self.todo


def grid_size(config: RunConfig, dataset: Dataset, units: list[Unit]) -> GridSize:
    """The size of the grid of ``config`` over ``dataset``, and the cells of ``units`` (plan_units) to do."""
    batches = dataset.batches(config.batch_size)
    todo = sum(len(u.defences) * len(batches[u.batch]) for u in units)
    return GridSize(len(dataset), len(config.metrics), len(config.attacks), len(grid_defences(config)), todo)


def batch_keys(items: list[ImageItem]) -> list[str]:
    """Per image of a batch: ``<digest of the batch's files and sizes>:<position>``.

    What a cell's values depend on besides its plugins: the seeds of attacks and randomised defences are
    drawn from the batch's file hashes, and a batched computation sees the whole batch. Stored with each
    cell (``batch_key``); a cell whose batch changed (an image replaced, added or removed before it in
    name order) is computed again, and one whose batch did not (a rename that keeps the order) is not.
    """
    digest = _hash("batch", [[item.sha256, list(item.size)] for item in items])[:16]
    return [f"{digest}:{i}" for i in range(len(items))]


class GridIndex:
    """Which stored cells belong to this grid: their plugins, image name, file hash and batch key are the
    grid's now (store.IDENTITY_COLUMNS). Membership is tested per part, so the grid is never expanded."""

    def __init__(self, config: RunConfig, dataset: Dataset):
        self.plugins = [
            {p.key() for p in plugins} for plugins in (config.metrics, config.attacks, grid_defences(config))
        ]
        self.images = {
            (item.name, item.sha256, key)
            for items in dataset.batches(config.batch_size)
            for item, key in zip(items, batch_keys(items))
        }

    def __contains__(self, identity: tuple) -> bool:
        mk, ak, dk, *image = identity
        return mk in self.plugins[0] and ak in self.plugins[1] and dk in self.plugins[2] and tuple(image) in self.images


def grid_keys(config: RunConfig, dataset: Dataset) -> set[tuple[str, ...]]:
    """The identities (store.IDENTITY_COLUMNS) of every cell of this grid, expanded (small grids, tests)."""
    index = GridIndex(config, dataset)
    return {(mk, ak, dk, *image) for mk, ak, dk in itertools.product(*index.plugins) for image in index.images}


def _cells_by_unit(
    config: RunConfig, dataset: Dataset
) -> Iterator[tuple[Unit, list[tuple[int, str, ImageItem, tuple]]]]:
    """For every (metric, batch, attack), in execution order: the unit (all defences) and its cells as
    ``(defence, defence key, image, identity)``."""
    batches = dataset.batches(config.batch_size)
    attack_keys = [entry.key() for entry in config.attacks]
    defence_keys = [defence.key() for defence in grid_defences(config)]
    for m, metric in enumerate(config.metrics):
        mk = metric.key()
        for b, items in enumerate(batches):
            images = [(item, (item.name, item.sha256, key)) for item, key in zip(items, batch_keys(items))]
            for a, ak in enumerate(attack_keys):
                cells = [
                    (d, dk, item, (mk, ak, dk, *image)) for d, dk in enumerate(defence_keys) for item, image in images
                ]
                yield Unit(m, a, b, tuple(range(len(defence_keys)))), cells


def plan_units(config: RunConfig, dataset: Dataset, finished: set[tuple[str, ...]]) -> list[Unit]:
    """Units with at least one unfinished cell (by store.IDENTITY_COLUMNS), in execution order."""
    units = []
    for unit, cells in _cells_by_unit(config, dataset):
        todo = tuple(sorted({d for d, _, _, identity in cells if identity not in finished}))
        if todo:
            units.append(Unit(unit.metric, unit.attack, unit.batch, todo))
    return units


def reuse_renamed(store: ResultStore, config: RunConfig, dataset: Dataset, finished: set[tuple[str, ...]]) -> int:
    """Copy the stored rows of renamed images to their new names instead of recomputing them.

    A cell's values depend on its plugins, its image's content and its batch (``batch_key``), not on the
    name; a rename that keeps the name order keeps every batch, so a finished cell with the same plugins,
    file hash and batch key under another name holds exactly the new cell's values. Its row is copied
    (new name, path, MOS, unit; values as stored); ``finished`` gains the copies. Returns their number.
    """
    current = {
        item.name: (item.sha256, key)
        for items in dataset.batches(config.batch_size)
        for item, key in zip(items, batch_keys(items))
    }
    by_content: dict[tuple, str] = {}
    for mk, ak, dk, name, sha, key in finished:
        if sha is not None and key is not None and current.get(name) != (sha, key):  # a name that moved on
            by_content.setdefault((mk, ak, dk, sha, key), name)
    if not by_content:
        return 0
    wanted: dict[tuple[str, ...], list[tuple[Unit, int, ImageItem, tuple]]] = {}
    for unit, cells in _cells_by_unit(config, dataset):
        for d, _, item, identity in cells:
            if identity in finished:
                continue
            mk, ak, dk, name, sha, key = identity
            source = by_content.get((mk, ak, dk, sha, key))
            if source is not None and source != name:
                wanted.setdefault((mk, ak, dk, source), []).append((unit, d, item, identity))
    if not wanted:
        return 0
    examples = {item.name for item in dataset.items[: config.examples]}
    copies, identities = [], []
    for stored in store.intact_rows(set(wanted)):
        for unit, d, item, identity in wanted[tuple(stored[c] for c in KEY_COLUMNS)]:
            if stored.get("status") != "ok" or (item.name in examples and not stored.get("example_path")):
                continue  # the new name needs an example image the old one did not keep: compute it
            row = cell_row(config, unit, d, item, identity[-1])
            row.update({k: stored.get(k) for k in ("f_clean", "f_adv", "f_def_clean", "f_def_adv", "adv_path")})
            row["scores"] = stored.get("scores") or {}
            row["example_path"] = (stored.get("example_path") or "") if item.name in examples else ""
            copies.append(row)
            identities.append(identity)
    if copies:
        store.write_cells(copies)
        finished.update(identities)
    return len(copies)


def run_info(config: RunConfig, dataset: Dataset, limit: int | None = None, plugins: Any = None) -> dict[str, Any]:
    """``run.json``: what the report needs (the score plugins' columns among it: their better side,
    aggregation, main table, so the report needs no plugin), and what ``iqadef verify`` needs to recompute a
    cell (the raw registry, the registry file it was read from, ``--limit``, torch's thread count)."""
    info = {
        "iqadef_version": __version__,
        "metrics": {m.label: _metric_entry(m) for m in config.metrics},
        "attacks": [e.label for e in config.attacks],
        "defences": [d.label for d in grid_defences(config)],
        "defence_plugins": {d.label: {"name": d.name, "geometric": _geometric(d)} for d in grid_defences(config)},
        "certified": {
            c.label: {"name": c.name, "eps": c.eps, "sigma": c.sigma, "n": c.n, "alpha": c.alpha}
            for c in config.certified
        },
        "seed": config.seed,
        "batch_size": config.batch_size,
        "dataset": {
            "images": str(config.images),
            "mos": str(config.mos) if config.mos else None,
            "count": len(dataset),
            "problems": dataset.problems,
            "source": config.dataset.describe() if config.dataset is not None else None,
        },
        "device": str(config.torch_device()),
        "registry": _jsonable(config.raw),
        "registry_file": str(Path(config.source).resolve()),
        "limit": limit,
        "torch_threads": torch.get_num_threads(),
        "score_columns": recorded_columns(plugins),
    }
    if config.protocol is not None:  # the robustness protocol's roles and budgets (analysis/protocol.py)
        info["protocol"] = config.protocol
    return info


def _metric_entry(metric: Any) -> dict[str, Any]:
    """A metric in ``run.json``: name, range, direction, and ``trained`` (method, training-image count, weight
    file) where its weights carry a ``train-robust`` record (plan/trained.py), so the report can set a
    fine-tuned metric beside its original without loading plugins."""
    entry = {"name": metric.name, "range": list(metric.range), "higher_is_better": metric.higher_is_better}
    trained = fine_tuning(metric)
    if trained is not None:
        entry["trained"] = trained
    return entry


def _geometric(defence: Any) -> bool:
    """A defence that moves pixels (``Defence.geometric``), or a composed one with such a stage."""
    stages = getattr(defence, "stages", None)
    return any(_geometric(s) for s in stages) if stages else bool(getattr(defence, "geometric", False))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def describe_unit(config: RunConfig, batches: list[list[ImageItem]], unit: Unit) -> str:
    items = batches[unit.batch]
    images = items[0].name if len(items) == 1 else f"{items[0].name} .. {items[-1].name}"
    return (
        f"unit {unit.id} (metric {config.metrics[unit.metric].label!r}, attack "
        f"{config.attacks[unit.attack].label!r}, {len(items)} image(s) {images})"
    )


def cell_row(config: RunConfig, unit: Unit, d: int, item: ImageItem, batch_key: str) -> dict[str, Any]:
    """A result row's identity and description (status ok, no values yet)."""
    metric, entry, defence = config.metrics[unit.metric], config.attacks[unit.attack], grid_defences(config)[d]
    return {
        "metric_key": metric.key(),
        "attack_key": entry.key(),
        "defence_key": defence.key(),
        "image": item.name,
        "metric": metric.label,
        "attack": entry.label,
        "defence": defence.label,
        "metric_params": metric.config,
        "attack_params": entry.attack.config,
        "defence_params": _defence_params(defence),
        "adaptive": entry.adaptive,
        "image_path": str(item.path),
        "image_sha256": item.sha256,
        "batch_key": batch_key,
        "status": "ok",
        "error": "",
        "mos": item.mos if item.mos is not None else float("nan"),
        "adv_path": "",
        "example_path": "",
        "scores": {},
        "unit": unit.id,
    }


def rows_of_failed_unit(
    config: RunConfig, batches: list[list[ImageItem]], unit: Unit, d: int, reason: str
) -> list[dict[str, Any]]:
    """The rows of defence ``d`` of ``unit``, all failed with ``reason``."""
    items = batches[unit.batch]
    rows = []
    for item, key in zip(items, batch_keys(items)):
        row = cell_row(config, unit, d, item, key)
        row.update(status="failed", error=reason)
        for k in ("f_clean", "f_adv", "f_def_clean", "f_def_adv"):
            row[k] = float("nan")
        rows.append(row)
    return rows


def _defence_params(defence: Defence) -> dict[str, Any]:
    stages = getattr(defence, "stages", None)
    if stages:
        return {"stages": [{"name": s.name, **s.config} for s in stages]}
    return defence.config


def attack_work(entry: AttackEntry) -> tuple[int, int]:
    """What one run of ``entry`` asks of the metric per image: (gradient steps, score queries).

    A gradient attack: its ``iters`` or ``steps`` parameter (else 1) times ``restarts`` (APGD: each restart
    runs all its steps) times ``eot_samples`` (an EOT attack averages that many draws per step). A black-box
    attack (``black_box``): its ``queries_per_image()`` if it has one (onepixel: a population per
    generation), else its ``queries`` budget (else its ``iters``), times ``eot_samples``; no gradient step.
    A budget search (``budget:``) runs the attack several times per image: not counted here."""
    attack = getattr(entry.attack, "inner", entry.attack)  # a budget search's attack: the inner one's parameters
    params = attack.config
    eot = max(1, entry.eot_samples)
    if getattr(attack, "black_box", False):
        counted = getattr(attack, "queries_per_image", None)
        queries = counted() if callable(counted) else params.get("queries") or params.get("iters") or 1
        return 0, int(queries) * eot
    steps = int(params.get("iters", params.get("steps", 1)))
    return steps * int(params.get("restarts", 1)) * eot, 0


def plugin_calls(config: RunConfig, dataset: Dataset, units: list[Unit]) -> dict[str, int]:
    """What the units still to do will ask of the plugins, per image: the cost of a plan in counts, exact by
    construction but not a time (a DiffPure call costs 10^4 JPEG calls). ``attack_steps`` and
    ``attack_queries`` are the attacks' own work (:func:`attack_work`; the queries also count in
    ``metric_scores``); an adaptive attack runs once per defence. A certified defence scores ``n`` noisy copies of
    each image
    (``smoothing_samples``, also counted in ``metric_scores``), for x once per metric x batch and for each x_a.
    Values reused from the cache of an earlier run count too."""
    batches = dataset.batches(config.batch_size)
    calls = {
        "attack_runs": 0,
        "attack_steps": 0,
        "attack_queries": 0,
        "metric_scores": 0,
        "defence_calls": 0,
        "smoothing_samples": 0,
    }
    clean_done: set[tuple[int, int]] = set()
    purifiers = len(config.defences)
    samples_per_image = sum(
        c.samples_per_image() for c in config.certified
    )  # f_s of one image, every certified defence
    for unit in units:
        n = len(batches[unit.batch])
        entry = config.attacks[unit.attack]
        runs = len(unit.defences) if entry.adaptive != "none" else 1
        steps, queries = attack_work(entry)
        purified = [d for d in unit.defences if d < purifiers]
        smoothed = sum(config.certified[d - purifiers].samples_per_image() for d in unit.defences if d >= purifiers)
        calls["attack_runs"] += runs * n
        calls["attack_steps"] += runs * n * steps
        calls["attack_queries"] += runs * n * queries
        calls["metric_scores"] += n * (runs * (1 + queries) + len(purified) + smoothed)  # f(x_a), f(D(x_a)), f_s(x_a)
        calls["smoothing_samples"] += n * smoothed
        calls["defence_calls"] += n * len(purified)  # D(x_a)
        if (unit.metric, unit.batch) not in clean_done:  # f(x), D(x), f(D(x)), f_s(x): once per metric x batch
            clean_done.add((unit.metric, unit.batch))
            calls["metric_scores"] += n * (1 + purifiers + samples_per_image)
            calls["smoothing_samples"] += n * samples_per_image
            calls["defence_calls"] += n * purifiers
    return calls
