"""The grid runner: every (image, metric, attack, defence) cell of a registry.

For each cell it records f(x), f(x_a), f(D(x)), f(D(x_a)) and every per-image score (PSNR, SSIM, ...).
Work is organised so that nothing is computed twice:

* the order is metric -> image batch -> attack -> defences, one batch of images in memory at a time;
* f(x) and D(x), f(D(x)) are computed once per (metric, batch) and reused by every attack;
* the adversarial image of (metric, attack, image, seed) is computed once, quantised to 8 bits,
  stored as a PNG under a content-hash key and reused by every defence (and by a resumed run);
* a *work unit* is (metric, attack, batch); its rows are written in one transaction, so a killed run
  resumes at the first unfinished unit and ends with exactly the table of an uninterrupted run.

The computing part (:class:`Worker`) is separate from the writing part (:func:`run_grid`) so other
executors (Ray) can compute units elsewhere while the driver stays the only writer.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .adaptive import DefendedMetric
from .base import Defence, Metric
from .cells import CellBatch
from .dataset import Dataset, ImageItem
from .errors import IqadefError
from .plugins import PluginRegistry, get_registry
from .registry import RunConfig
from .rundir import prepare_run_dir
from .scores import image_score_classes
from .store import KEY_COLUMNS, ResultStore, RunLock, atomic_write_bytes, export_tables
from .weights import fetch_missing


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _seed(*parts: Any) -> int:
    return int(_hash(*parts)[:15], 16)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what a PNG stores), so cached and fresh images score identically."""
    return torch.round(images.clamp(0, 1) * 255.0) / 255.0


def png_bytes(image: torch.Tensor) -> bytes:
    arr = (quantize(image.detach().cpu()) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_png(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


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


@dataclass
class UnitResult:
    rows: list[dict[str, Any]]
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (relative path, PNG bytes)
    artifacts: list[tuple[str, str, str]] = field(default_factory=list)  # (key, relative path, sha256)


class CellFailure(Exception):
    """A plugin misbehaved in one cell; recorded as a failed cell, the grid goes on."""


def _check_images(out: Any, like: torch.Tensor | None, who: str, same_size: bool = True) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise CellFailure(f"{who} returned {type(out).__name__}, not a tensor")
    if out.dim() != 4 or out.shape[1] != 3 or (like is not None and out.shape[0] != like.shape[0]):
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected [B,3,H,W] with B={like.shape[0] if like is not None else 'B'}")
    if same_size and like is not None and out.shape != like.shape:
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected {tuple(like.shape)}")
    if not torch.isfinite(out).all():
        raise CellFailure(f"{who} returned NaN or inf pixels")
    low, high = float(out.min()), float(out.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise CellFailure(f"{who} returned values in [{low:.4g}, {high:.4g}], outside [0, 1]")
    return out.clamp(0, 1)


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """Computes work units. Holds the loaded plugins and the current batch's clean-side results."""

    def __init__(self, config: RunConfig, dataset: Dataset, run_dir: Path,
                 artifact_lookup: Callable[[str], tuple[str, str] | None], device: torch.device,
                 registry: PluginRegistry | None = None):
        self.config = config
        self.dataset = dataset
        self.batches = dataset.batches(config.batch_size)
        self.run_dir = run_dir
        self.artifact_lookup = artifact_lookup
        self.device = device
        self.example_names = {item.name for item in dataset.items[: config.examples]}
        self.image_scores = [cls() for cls in image_score_classes(registry or get_registry())]
        self._clean_key: tuple[int, int] | None = None
        self._clean: dict[str, Any] = {}

    # -- clean side, shared by all attacks of a (metric, batch) -------------------------------
    def _clean_side(self, m: int, b: int) -> dict[str, Any]:
        if self._clean_key == (m, b):
            return self._clean
        metric = self.config.metrics[m].load(self.device)
        items = self.batches[b]
        x = self.dataset.load(items).to(self.device)
        with torch.no_grad():
            f_clean = metric.score(x).detach().float().reshape(-1)
        self._clean_key = (m, b)
        self._clean = {"x": x, "f": f_clean, "defended": {}, "memo": {}}
        return self._clean

    def _defended_clean(self, m: int, b: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self._clean_side(m, b)
        if d not in clean["defended"]:
            defence = self.config.defences[d].load(self.device)
            metric = self.config.metrics[m]
            with torch.no_grad():
                dx = defence.purify(clean["x"], seed=self.defence_seed(d, b))
                dx = _check_images(dx, clean["x"], f"defence {defence.label!r}", defence.preserves_size)
                clean["defended"][d] = (dx, metric.score(dx).detach().float().reshape(-1))
        return clean["defended"][d]

    def defence_seed(self, d: int, b: int) -> int:
        return _seed("defence", self.config.seed, self.config.defences[d].key(), [i.sha256 for i in self.batches[b]])

    def attack_seed(self, m: int, a: int, b: int) -> int:
        return _seed("attack", self.config.seed, self.config.metrics[m].key(), self.config.attacks[a].key(),
                     [i.sha256 for i in self.batches[b]])

    # -- adversarial images ---------------------------------------------------------------------
    def _adversarial(self, unit: Unit, d: int | None, result: UnitResult) -> tuple[torch.Tensor, list[str]]:
        """x_a for the unit's batch (per defence when the attack is adaptive), cached as PNGs."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        items = self.batches[unit.batch]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)
        defence_key = cfg.defences[d].key() if d is not None else None
        keys = [_hash("adv", metric.identity(), entry.attack.identity(), entry.adaptive, entry.eot_samples,
                      defence_key, item.sha256, seed) for item in items]
        paths = [f"cache/adv/{k[:2]}/{k}.png" for k in keys]
        cached = [self._cached(k) for k in keys]
        if all(c is not None for c in cached):
            return torch.stack(cached).to(self.device), paths  # type: ignore[arg-type]
        x = self._clean_side(unit.metric, unit.batch)["x"]
        target: Metric = metric
        if d is not None:
            target = DefendedMetric(metric, cfg.defences[d].load(self.device),
                                    samples=entry.eot_samples if "eot" in entry.adaptive else 1, seed=seed)
        attack = entry.attack.load(self.device)
        try:
            x_adv = attack.run(target, x.clone(), seed=seed)
        except Exception as exc:  # noqa: BLE001 - a broken plugin fails its cells, not the run
            raise CellFailure(f"attack {entry.label!r} raised {_describe_exc(exc)}") from exc
        x_adv = quantize(_check_images(x_adv.detach(), x, f"attack {entry.label!r}"))
        for k, rel, img in zip(keys, paths, x_adv):
            data = png_bytes(img)
            result.files.append((rel, data))
            result.artifacts.append((k, rel, hashlib.sha256(data).hexdigest()))
        return x_adv, paths

    def _cached(self, key: str) -> torch.Tensor | None:
        found = self.artifact_lookup(key)
        if found is None:
            return None
        rel, sha = found
        path = self.run_dir / rel
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            return None  # corrupted or half-written: recompute
        try:
            return read_png(path)
        except Exception:  # noqa: BLE001
            return None

    # -- one unit ---------------------------------------------------------------------------------
    def compute(self, unit: Unit) -> UnitResult:
        cfg = self.config
        result = UnitResult(rows=[])
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        items = self.batches[unit.batch]
        try:
            clean = self._clean_side(unit.metric, unit.batch)
        except Exception as exc:  # noqa: BLE001
            for d in unit.defences:
                result.rows.extend(self._failed_rows(unit, d, items, f"metric {metric.label!r} raised {_describe_exc(exc)}"))
            return result
        shared_adv = None
        if entry.adaptive == "none":
            try:
                shared_adv = self._adversarial(unit, None, result)
            except CellFailure as exc:
                for d in unit.defences:
                    result.rows.extend(self._failed_rows(unit, d, items, str(exc)))
                return result
            with torch.no_grad():
                f_adv_shared = self._score(metric, shared_adv[0])
        for d in unit.defences:
            defence = cfg.defences[d]
            try:
                if shared_adv is None:
                    x_adv, adv_paths = self._adversarial(unit, d, result)
                    with torch.no_grad():
                        f_adv = self._score(metric, x_adv)
                else:
                    (x_adv, adv_paths), f_adv = shared_adv, f_adv_shared
                dx, f_dx = self._defended_clean(unit.metric, unit.batch, d)
                with torch.no_grad():
                    dxa = defence.load(self.device).purify(x_adv, seed=self.defence_seed(d, unit.batch))
                    dxa = _check_images(dxa, x_adv, f"defence {defence.label!r}", defence.preserves_size)
                    f_dxa = self._score(metric, dxa)
                cells = CellBatch(clean["x"], x_adv, dx, dxa, clean["f"], f_adv, f_dx, f_dxa, metric, clean["memo"])
                try:
                    scores = self._image_scores(cells)
                finally:
                    _forget(clean["memo"], keep=[clean["x"], x_adv, *(v[0] for v in clean["defended"].values())])
            except CellFailure as exc:
                result.rows.extend(self._failed_rows(unit, d, items, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001
                result.rows.extend(self._failed_rows(unit, d, items, f"defence {defence.label!r} raised {_describe_exc(exc)}"))
                continue
            for i, item in enumerate(items):
                values = [float(v[i]) for v in (clean["f"], f_adv, f_dx, f_dxa)]
                row = self._row(unit, d, item)
                row.update(f_clean=values[0], f_adv=values[1], f_def_clean=values[2], f_def_adv=values[3],
                           adv_path=adv_paths[i], scores={k: float(v[i]) for k, v in scores.items()})
                bad = [n for n, v in zip(("f(x)", "f(x_a)", "f(D(x))", "f(D(x_a))"), values) if not math.isfinite(v)]
                if bad:
                    row.update(status="failed", error=f"metric {metric.label!r} returned NaN/inf for {', '.join(bad)}")
                if item.name in self.example_names:
                    data = png_bytes(dxa[i])
                    rel = f"examples/{_hash('example', row['metric_key'], row['attack_key'], row['defence_key'], item.name)[:24]}.png"
                    result.files.append((rel, data))
                    row["example_path"] = rel
                result.rows.append(row)
        return result

    def _score(self, metric: Metric, images: torch.Tensor) -> torch.Tensor:
        try:
            return metric.score(images).detach().float().reshape(-1)
        except Exception as exc:  # noqa: BLE001
            raise CellFailure(f"metric {metric.label!r} raised {_describe_exc(exc)}") from exc

    def _image_scores(self, cells: CellBatch) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for score in self.image_scores:
            try:
                values = score.compute(cells)
            except Exception as exc:  # noqa: BLE001
                raise CellFailure(f"score {score.name!r} raised {_describe_exc(exc)}") from exc
            for k, v in values.items():
                out[k] = torch.as_tensor(v).detach().float().reshape(-1).cpu()
        return out

    def _row(self, unit: Unit, d: int, item: ImageItem) -> dict[str, Any]:
        cfg = self.config
        metric, entry, defence = cfg.metrics[unit.metric], cfg.attacks[unit.attack], cfg.defences[d]
        return {
            "metric_key": metric.key(), "attack_key": entry.key(), "defence_key": defence.key(),
            "image": item.name, "metric": metric.label, "attack": entry.label, "defence": defence.label,
            "metric_params": metric.config, "attack_params": entry.attack.config,
            "defence_params": _defence_params(defence), "adaptive": entry.adaptive,
            "image_path": str(item.path), "status": "ok", "error": "",
            "mos": item.mos if item.mos is not None else float("nan"),
            "adv_path": "", "example_path": "", "scores": {}, "unit": unit.id,
        }

    def _failed_rows(self, unit: Unit, d: int, items: list[ImageItem], reason: str) -> list[dict[str, Any]]:
        rows = []
        for item in items:
            row = self._row(unit, d, item)
            row.update(status="failed", error=reason)
            for k in ("f_clean", "f_adv", "f_def_clean", "f_def_adv"):
                row[k] = float("nan")
            rows.append(row)
        return rows


def _forget(memo: dict, keep: list[torch.Tensor]) -> None:
    """Drop memoised pair measures that involve images other than ``keep`` (bounded memory)."""
    kept = {id(t) for t in keep}
    for key in [k for k, v in memo.items() if id(v[0]) not in kept or id(v[1]) not in kept]:
        del memo[key]


def _defence_params(defence: Defence) -> dict[str, Any]:
    stages = getattr(defence, "stages", None)
    if stages:
        return {"stages": [{"name": s.name, **s.config} for s in stages]}
    return defence.config


# ------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    run_dir: Path
    total: int
    computed: int
    skipped: int
    failed: int
    seconds: float
    table: pd.DataFrame
    files: dict[str, Path]
    problems: list[str]
    #: Cells in the store from other grids (other parameters, weights, images): kept, not exported.
    other_cells: int = 0


def grid_keys(config: RunConfig, dataset: Dataset) -> set[tuple[str, str, str, str]]:
    """The store keys of every cell of this grid (plugin identities include parameters and weights)."""
    names = [item.name for item in dataset.items]
    keys = [[p.key() for p in plugins] for plugins in (config.metrics, config.attacks, config.defences)]
    return set(itertools.product(*keys, names))


def plan_units(config: RunConfig, dataset: Dataset, finished: set[tuple[str, str, str, str]]) -> list[Unit]:
    """Units with at least one unfinished cell, in execution order."""
    units = []
    batches = dataset.batches(config.batch_size)
    attack_keys = [entry.key() for entry in config.attacks]
    defence_keys = [defence.key() for defence in config.defences]
    for m, metric in enumerate(config.metrics):
        mk = metric.key()
        for b, items in enumerate(batches):
            for a, ak in enumerate(attack_keys):
                todo = tuple(d for d, dk in enumerate(defence_keys)
                             if any((mk, ak, dk, item.name) not in finished for item in items))
                if todo:
                    units.append(Unit(m, a, b, todo))
    return units


def run_info(config: RunConfig, dataset: Dataset) -> dict[str, Any]:
    from .. import __version__

    return {
        "iqadef_version": __version__,
        "metrics": {m.label: {"name": m.name, "range": list(m.range), "higher_is_better": m.higher_is_better}
                    for m in config.metrics},
        "attacks": [e.label for e in config.attacks],
        "defences": [d.label for d in config.defences],
        "seed": config.seed,
        "batch_size": config.batch_size,
        "dataset": {"images": str(config.images), "mos": str(config.mos) if config.mos else None,
                    "count": len(dataset), "problems": dataset.problems},
        "registry": _jsonable(config.raw),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def execute_local(worker: Worker, units: list[Unit]) -> Iterator[tuple[Unit, UnitResult]]:
    for unit in units:
        yield unit, worker.compute(unit)


def run_grid(config: RunConfig, *, fresh: bool = False, limit: int | None = None, progress: bool | None = None,
             executor: str | None = None, after_unit: Callable[[int], None] | None = None,
             registry: PluginRegistry | None = None) -> RunSummary:
    """Run (or resume) the grid of ``config``; returns the summary. See the module docstring."""
    start = time.perf_counter()
    output = config.output
    folder = prepare_run_dir(output)
    with RunLock(output):
        if fresh:
            folder.fresh()
        folder.remove_stale_temp_files()
        device = config.torch_device()
        dataset = Dataset(config.images, config.mos, max_side=config.max_side, limit=limit)
        store = ResultStore(output)
        try:
            info = run_info(config, dataset)
            atomic_write_bytes(output / "run.json", json.dumps(info, indent=2).encode())
            fetch_missing(config.plugins())  # a missing weight file stops the run now, not hours in
            finished = store.finished()
            units = plan_units(config, dataset, finished)
            total_cells = len(dataset) * len(config.metrics) * len(config.attacks) * len(config.defences)
            batches = dataset.batches(config.batch_size)
            todo_cells = sum(len(u.defences) * len(batches[u.batch]) for u in units)
            computed = 0
            executor = executor or config.executor
            if units:
                if executor == "ray":
                    from .executors.ray_executor import execute_ray

                    stream = execute_ray(config, dataset, output, units, device, registry=registry)
                else:
                    worker = Worker(config, dataset, output, store.artifact, device, registry)
                    stream = execute_local(worker, units)
                with _progress(progress, len(units), todo_cells) as bar:
                    for n, (unit, result) in enumerate(stream, start=1):
                        folder.record(rel for rel, _ in result.files)  # listed before written
                        for rel, data in result.files:
                            atomic_write_bytes(output / rel, data)
                        store.write_cells(result.rows, result.artifacts)
                        computed += len(result.rows)
                        bar.advance(len(result.rows))
                        if after_unit is not None:
                            after_unit(n)
            everything = store.dataframe()
            current = grid_keys(config, dataset)
            in_grid = [key in current for key in everything[list(KEY_COLUMNS)].itertuples(index=False, name=None)]
            df = everything[in_grid].reset_index(drop=True)
            other = len(everything) - len(df)
        finally:
            store.close()
        files = export_tables(df, output)
        failed = int((df["status"] != "ok").sum()) if len(df) else 0
        table = summary_table(df, info)
    return RunSummary(output, total_cells, computed, total_cells - todo_cells, failed,
                      time.perf_counter() - start, table, files, list(dataset.problems), other)


def summary_table(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Mean gain |f(x) - f(D(x_a))| / |f(x)| per metric x attack x defence (the short end-of-run table)."""
    try:
        from .report import summary_table as full_summary
    except ImportError:
        full_summary = None
    if full_summary is not None:
        return full_summary(df, info)
    ok = df[df["status"] == "ok"] if len(df) else df
    if not len(ok):
        return pd.DataFrame(columns=["metric", "attack", "defence", "gain", "cells"])
    gain = (ok["f_clean"] - ok["f_def_adv"]).abs() / ok["f_clean"].abs().clip(lower=1e-12)
    out = ok.assign(gain=gain).groupby(["metric", "attack", "defence"], sort=False).agg(
        gain=("gain", "mean"), cells=("gain", "size")).reset_index()
    return out


class _Bar:
    def __init__(self, progress: Any = None, units: Any = None, cells: Any = None):
        self.progress, self.units, self.cells = progress, units, cells

    def advance(self, n_cells: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.units, 1)
            self.progress.advance(self.cells, n_cells)


class _progress:
    """Rich progress bars on stderr, one per stage: attack units, then cells (defences + scores)."""

    def __init__(self, enabled: bool | None, units: int, cells: int):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.units, self.cells = units, cells
        self.progress = None

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return _Bar()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.progress.__enter__()
        units = self.progress.add_task("attacks (metric x attack x batch)", total=self.units)
        cells = self.progress.add_task("cells (defences + scores)", total=self.cells)
        return _Bar(self.progress, units, cells)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


__all__ = ["RunSummary", "Unit", "UnitResult", "Worker", "plan_units", "run_grid", "summary_table"]
