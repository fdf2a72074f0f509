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

What makes a stored result trustworthy (docs/reliability.md):

* a cell is identified by its plugins (parameters and weights included), its image's name, the image
  file's sha256 and its batch (:func:`batch_keys`): an image replaced under its name, or a batch that
  changed, is computed again; a rename that keeps every batch copies the stored rows (:func:`reuse_renamed`);
* plugins share tensors but cannot change them unseen (:mod:`iqadef.core.guard`), and their outputs are
  checked against the contract (a metric: exactly B real numbers; attacks, defences: ``[B,3,H,W]`` in
  [0, 1]; a per-image score: B numbers per column); whatever a plugin raises, ``SystemExit`` included,
  fails its cells, not the run;
* each unit has ``unit_timeout`` seconds (:func:`execute_local` computes units in a daemon thread).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import queue
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .adaptive import DefendedMetric
from .base import Defence, Metric
from .cells import CellBatch
from .dataset import Dataset, ImageItem
from .errors import IqadefError
from .guard import CellFailure, GuardedMetric, InputModified, Seal, Tripwire, broken, modified_message
from .plugins import PluginRegistry, get_registry
from .registry import RunConfig
from .rundir import prepare_run_dir
from .scores import image_score_classes
from .store import (CELL_COLUMNS, IDENTITY_COLUMNS, KEY_COLUMNS, ResultStore, RunLock, atomic_write_bytes,
                    export_tables)
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


def read_png(path: Path | io.BytesIO) -> torch.Tensor:
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


class _Unattributed(CellFailure):
    """A shared tensor changed during one defence's cells without a version bump (``.data`` writes):
    the defence's cells are computed again with a fingerprint after every call, to name the plugin."""


def _check_images(out: Any, like: torch.Tensor | None, who: str, same_size: bool = True) -> torch.Tensor:
    """An attack's or a defence's output: ``[B,3,H,W]`` float pixels in [0, 1] on the input's device."""
    expected = f"[B,3,H,W] with B={like.shape[0]}" if like is not None else "[B,3,H,W]"
    if not isinstance(out, torch.Tensor):
        raise CellFailure(f"{who} returned {type(out).__name__}, expected a tensor {expected}")
    if out.dim() != 4 or out.shape[1] != 3 or (like is not None and out.shape[0] != like.shape[0]):
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected {expected}")
    if same_size and like is not None and out.shape != like.shape:
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected {tuple(like.shape)}")
    if not out.is_floating_point():
        raise CellFailure(f"{who} returned {out.dtype} pixels, expected floats in [0, 1]")
    if like is not None and out.device != like.device:
        raise CellFailure(f"{who} returned a tensor on {out.device}, expected {like.device} (its input's device)")
    if not torch.isfinite(out).all():
        raise CellFailure(f"{who} returned NaN or inf pixels")
    low, high = float(out.min()), float(out.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise CellFailure(f"{who} returned values in [{low:.4g}, {high:.4g}], outside [0, 1]")
    return out.clamp(0, 1)


def _check_scores(out: Any, n: int, who: str) -> torch.Tensor:
    """A metric's output: exactly ``n`` real numbers, shape ``[n]`` (``[n, 1]`` accepted), as a float copy.

    The copy keeps the scores safe from a metric that reuses its output buffer on the next call."""
    if not isinstance(out, torch.Tensor):
        raise CellFailure(f"{who} returned {type(out).__name__}, expected a tensor of {n} scores (shape [{n}])")
    if tuple(out.shape) not in ((n,), (n, 1)):
        raise CellFailure(f"{who} returned shape {list(out.shape)}, expected [{n}]: one score per image "
                          f"([{n}, 1] is accepted)")
    if out.is_complex() or out.dtype == torch.bool:
        raise CellFailure(f"{who} returned {out.dtype} scores, expected real numbers")
    return out.detach().float().reshape(-1).clone()


#: Column names a per-image score may not use (they are the table's own columns).
RESERVED_COLUMNS = frozenset(CELL_COLUMNS) | {"checksum"}


def _check_score_values(values: Any, n: int, who: str) -> dict[str, torch.Tensor]:
    """An ImageScore's output: a mapping of column name -> ``n`` numbers (a ``[n]`` tensor, a list of floats)."""
    if not isinstance(values, Mapping):
        raise CellFailure(f"{who} returned {type(values).__name__}, expected a dict of column name -> {n} values")
    out: dict[str, torch.Tensor] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise CellFailure(f"{who} returned the column name {name!r}, expected a non-empty string")
        if name in RESERVED_COLUMNS:
            raise CellFailure(f"{who} returned a column named {name!r}, which the result table uses itself; "
                              f"rename it")
        try:
            tensor = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value.detach()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CellFailure(f"{who} returned {type(value).__name__} for {name!r}, expected {n} numbers "
                              f"({_describe_exc(exc)})") from None
        if tuple(tensor.shape) not in ((n,), (n, 1)) and not (n == 1 and tensor.dim() == 0):
            raise CellFailure(f"{who} returned shape {list(tensor.shape)} for {name!r}, expected {n} value(s), "
                              f"one per image (shape [{n}])")
        if tensor.is_complex():
            raise CellFailure(f"{who} returned complex values for {name!r}, expected real numbers")
        out[name] = tensor.float().reshape(-1).cpu().clone()
    return out


def _describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def batch_keys(items: list[ImageItem]) -> list[str]:
    """Per image of a batch: ``<digest of the batch's files and sizes>:<position>``.

    What a cell's values depend on besides its plugins: the seeds of attacks and randomised defences are
    drawn from the batch's file hashes, and a batched computation sees the whole batch. Stored with each
    cell (``batch_key``); a cell whose batch changed (an image replaced, added or removed before it in
    name order) is computed again, and one whose batch did not (a rename that keeps the order) is not.
    """
    digest = _hash("batch", [[item.sha256, list(item.size)] for item in items])[:16]
    return [f"{digest}:{i}" for i in range(len(items))]


def cell_row(config: RunConfig, unit: Unit, d: int, item: ImageItem, batch_key: str) -> dict[str, Any]:
    """A result row's identity and description (status ok, no values yet)."""
    metric, entry, defence = config.metrics[unit.metric], config.attacks[unit.attack], config.defences[d]
    return {
        "metric_key": metric.key(), "attack_key": entry.key(), "defence_key": defence.key(),
        "image": item.name, "metric": metric.label, "attack": entry.label, "defence": defence.label,
        "metric_params": metric.config, "attack_params": entry.attack.config,
        "defence_params": _defence_params(defence), "adaptive": entry.adaptive,
        "image_path": str(item.path), "image_sha256": item.sha256, "batch_key": batch_key,
        "status": "ok", "error": "",
        "mos": item.mos if item.mos is not None else float("nan"),
        "adv_path": "", "example_path": "", "scores": {}, "unit": unit.id,
    }


def failed_rows(config: RunConfig, batches: list[list[ImageItem]], unit: Unit, d: int,
                reason: str) -> list[dict[str, Any]]:
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


class Worker:
    """Computes work units. Holds the loaded plugins and the current batch's clean-side results.

    Every plugin method runs through :meth:`_call`: whatever it raises (any ``BaseException`` but
    ``KeyboardInterrupt``: a plugin's ``sys.exit()`` too) fails the cells of that call, and the tensors
    handed to it are sealed (:mod:`iqadef.core.guard`): version counters after every call, fingerprints
    after every metric and defence call on the clean side and once per defence after its scores (a
    fingerprint failure there computes that defence again with a fingerprint after every call, to name
    the plugin). A broken seal fails the cells, names the plugin, and the shared tensors are rebuilt from
    their sources, so later cells are right. ``guard_inputs=False`` turns the seals off (the benchmark's
    baseline only).
    """

    def __init__(self, config: RunConfig, dataset: Dataset, run_dir: Path,
                 artifact_lookup: Callable[[str], tuple[str, str] | None], device: torch.device,
                 registry: PluginRegistry | None = None, *, guard_inputs: bool = True):
        self.config = config
        self.dataset = dataset
        self.batches = dataset.batches(config.batch_size)
        self.batch_keys = [batch_keys(items) for items in self.batches]
        self.run_dir = run_dir
        self.artifact_lookup = artifact_lookup
        self.device = device
        self.guard_inputs = guard_inputs
        self.example_names = {item.name for item in dataset.items[: config.examples]}
        self.image_scores = [cls() for cls in image_score_classes(registry or get_registry())]
        #: The plugin call running now (None between calls) and the last one: named when a unit times out.
        self.activity: str | None = None
        self.last_activity: str | None = None
        self._clean_key: tuple[int, int] | None = None
        self._clean: dict[str, Any] = {}
        #: Defences whose D(x) failed for the current (metric, batch): the same reason for every attack.
        self._defence_failures: tuple[tuple[int, int] | None, dict[int, str]] = (None, {})
        self._unit_pngs: dict[str, bytes] = {}  # this unit's adversarial PNGs, to rebuild x_a from
        self._tainted = False  # a plugin wrote into a shared tensor: rebuild before the next cells

    # -- plugin calls ------------------------------------------------------------------------------
    def _seal(self, tensor: torch.Tensor, name: str) -> Seal | None:
        return Seal(tensor, name) if self.guard_inputs else None

    def _call(self, who: str, method: str, call: Callable[[], Any], seals: Sequence[Seal | None] = (),
              deep: bool = True) -> Any:
        """``call()`` (one plugin method); its exceptions and writes into ``seals`` become a CellFailure."""
        self.activity = self.last_activity = f"{who} ({method})"
        error: BaseException | None = None
        out = None
        try:
            out = call()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit or any other escape fails the plugin's cells
            error = exc
        finally:
            self.activity = None
        bad = broken([s for s in seals if s is not None], deep) if self.guard_inputs else None
        if bad is not None:
            self._tainted = True
            raise InputModified(modified_message(who, bad.name)) from error
        if isinstance(error, CellFailure):
            raise error
        if error is not None:
            raise CellFailure(f"{who} raised {_describe_exc(error)}") from error
        return out

    def _load(self, who: str, plugin: Any) -> Any:
        return self._call(who, "setup", lambda: plugin.load(self.device))

    def _score(self, metric: Metric, images: torch.Tensor, seal: Seal | None, deep: bool = True) -> torch.Tensor:
        who = f"metric {metric.label!r}"
        with torch.no_grad():
            out = self._call(who, "score", lambda: metric.score(images), [seal], deep)
        return _check_scores(out, images.shape[0], who)

    # -- clean side, shared by all attacks of a (metric, batch) -------------------------------
    def _clean_side(self, m: int, b: int) -> dict[str, Any]:
        if self._clean_key == (m, b):
            return self._clean
        self._clean_key, self._clean = None, {}
        metric = self._load(f"metric {self.config.metrics[m].label!r}", self.config.metrics[m])
        x = self.dataset.load(self.batches[b]).to(self.device)
        seal = self._seal(x, "the clean images x")
        f_clean = self._score(metric, x, seal)
        self._clean_key = (m, b)
        self._clean = {"x": x, "seal": seal, "f": f_clean, "f_seal": self._seal(f_clean, "f(x)"),
                       "defended": {}, "memo": {}}
        return self._clean

    def _defended_clean(self, m: int, b: int, d: int) -> tuple[torch.Tensor, torch.Tensor, Seal | None, Seal | None]:
        """D(x), f(D(x)) and their seals, computed once per (metric, batch, defence)."""
        clean = self._clean_side(m, b)
        if self._defence_failures[0] != (m, b):
            self._defence_failures = ((m, b), {})
        failures = self._defence_failures[1]
        if d in failures:
            raise CellFailure(failures[d])
        if d not in clean["defended"]:
            entry = self.config.defences[d]
            who = f"defence {entry.label!r}"
            try:
                defence = self._load(who, entry)
                x = clean["x"]
                with torch.no_grad():
                    dx = self._call(who, "purify", lambda: defence.purify(x, seed=self.defence_seed(d, b)),
                                    [clean["seal"]])
                dx = _check_images(dx, x, who, defence.preserves_size)
                dx_seal = self._seal(dx, "D(x)")
                f_dx = self._score(self.config.metrics[m], dx, dx_seal)
            except CellFailure as exc:
                failures[d] = str(exc)
                raise
            clean["defended"][d] = (dx, f_dx, dx_seal, self._seal(f_dx, "f(D(x))"))
        return clean["defended"][d]

    def defence_seed(self, d: int, b: int) -> int:
        return _seed("defence", self.config.seed, self.config.defences[d].key(), [i.sha256 for i in self.batches[b]])

    def attack_seed(self, m: int, a: int, b: int) -> int:
        return _seed("attack", self.config.seed, self.config.metrics[m].key(), self.config.attacks[a].key(),
                     [i.sha256 for i in self.batches[b]])

    # -- adversarial images ---------------------------------------------------------------------
    def adv_keys(self, unit: Unit, d: int | None) -> list[str]:
        """Cache keys of x_a for the unit's images (per defence when the attack is adaptive).

        The image's file hash and the attack's seed (drawn from the batch) are in the key; the same file
        twice in one batch gets its occurrence number too (their noise differs)."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        items = self.batches[unit.batch]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)
        defence_key = cfg.defences[d].key() if d is not None else None
        keys, seen = [], {}
        for item in items:
            copy = seen[item.sha256] = seen.get(item.sha256, -1) + 1
            extra = [copy] if copy else []
            keys.append(_hash("adv", metric.identity(), entry.attack.identity(), entry.adaptive, entry.eot_samples,
                              defence_key, item.sha256, seed, *extra))
        return keys

    def _adversarial(self, unit: Unit, d: int | None, result: UnitResult) -> tuple[torch.Tensor, list[str]]:
        """x_a for the unit's batch (per defence when the attack is adaptive), cached as PNGs."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        items = self.batches[unit.batch]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)
        keys = self.adv_keys(unit, d)
        paths = [f"cache/adv/{k[:2]}/{k}.png" for k in keys]
        cached = [self._cached(k, item.size) for k, item in zip(keys, items)]
        if all(c is not None for c in cached):
            return torch.stack(cached).to(self.device), paths  # type: ignore[arg-type]
        x = self._clean_side(unit.metric, unit.batch)["x"]
        tripwire = Tripwire()
        target: Metric = GuardedMetric(metric, tripwire) if self.guard_inputs else metric
        if d is not None:
            defence = self._load(f"defence {cfg.defences[d].label!r}", cfg.defences[d])
            target = DefendedMetric(metric, defence, samples=entry.eot_samples if "eot" in entry.adaptive else 1,
                                    seed=seed, tripwire=tripwire if self.guard_inputs else None)
        who = f"attack {entry.label!r}"
        attack = self._load(who, entry.attack)
        x_adv = self._call(who, "run", lambda: attack.run(target, x.clone(), seed=seed))
        if tripwire.message is not None:  # a metric or defence wrote into the attack's images
            raise InputModified(tripwire.message)
        x_adv = quantize(_check_images(x_adv.detach() if isinstance(x_adv, torch.Tensor) else x_adv, x, who))
        for k, rel, img in zip(keys, paths, x_adv):
            data = png_bytes(img)
            self._unit_pngs[k] = data
            result.files.append((rel, data))
            result.artifacts.append((k, rel, hashlib.sha256(data).hexdigest()))
        return x_adv, paths

    def _cached(self, key: str, size: tuple[int, int]) -> torch.Tensor | None:
        """A cached x_a: from this unit's PNGs, else the run folder's (sha256 checked); None if absent,
        corrupted or of another size than the image now loads at (``dataset.max_side`` changed)."""
        data = self._unit_pngs.get(key)
        if data is None:
            found = self.artifact_lookup(key)
            if found is None:
                return None
            rel, sha = found
            try:
                data = (self.run_dir / rel).read_bytes()
            except OSError:
                return None
            if hashlib.sha256(data).hexdigest() != sha:
                return None  # corrupted or half-written: recompute
        try:
            image = read_png(io.BytesIO(data))
        except Exception:  # noqa: BLE001
            return None
        return image if tuple(image.shape[1:]) == tuple(size) else None

    # -- one unit ---------------------------------------------------------------------------------
    def compute(self, unit: Unit) -> UnitResult:
        result = UnitResult(rows=[])
        self._unit_pngs = {}
        shared: tuple | None = None
        todo = list(unit.defences)
        while todo:
            d = todo[0]
            if self._tainted:  # a plugin wrote into a shared tensor: rebuild them from their sources
                self._tainted, self._clean_key, shared = False, None, None
            try:
                if shared is None:
                    shared = self._unit_state(unit, result)
            except CellFailure as exc:  # the metric or the attack failed: every cell of the unit did
                for d in todo:
                    result.rows.extend(failed_rows(self.config, self.batches, unit, d, str(exc)))
                break
            try:
                rows = self._cells(unit, d, shared[0], result)
            except _Unattributed:
                rows = self._diagnose(unit, d, result)
            except CellFailure as exc:
                rows = failed_rows(self.config, self.batches, unit, d, str(exc))
            result.rows.extend(rows)
            todo.pop(0)
        if self._tainted:
            self._tainted, self._clean_key = False, None
        self._unit_pngs = {}
        return result

    def _unit_state(self, unit: Unit, result: UnitResult) -> tuple:
        """The clean side and, unless the attack is adaptive, x_a and f(x_a) (shared by every defence)."""
        self._clean_side(unit.metric, unit.batch)
        if self.config.attacks[unit.attack].adaptive != "none":
            return (None,)
        x_adv, paths = self._adversarial(unit, None, result)
        seal = self._seal(x_adv, "x_a")
        f_adv = self._score(self.config.metrics[unit.metric], x_adv, seal)
        return ((x_adv, paths, seal, f_adv, self._seal(f_adv, "f(x_a)")),)

    def _diagnose(self, unit: Unit, d: int, result: UnitResult) -> list[dict[str, Any]]:
        """Defence ``d``'s cells changed a shared tensor unseen by its version counter: compute them again
        from rebuilt tensors with a fingerprint after every call, to name the plugin; they fail either way."""
        self._tainted, self._clean_key = False, None
        reason = ("a plugin of these cells (the defence, the metric or a score) modified a shared tensor in place "
                  "(not reproduced when computed again)")
        try:
            shared = self._unit_state(unit, UnitResult(rows=[]))
            self._cells(unit, d, shared[0], UnitResult(rows=[]), diagnose=True)
        except CellFailure as exc:
            reason = str(exc)
        self._tainted = True
        return failed_rows(self.config, self.batches, unit, d, reason)

    def _cells(self, unit: Unit, d: int, shared: tuple | None, result: UnitResult,
               diagnose: bool = False) -> list[dict[str, Any]]:
        """The rows of defence ``d`` of ``unit``. Seals are checked by version after every call and by
        fingerprint at the end (``diagnose``: by fingerprint after every call)."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.defences[d]
        items = self.batches[unit.batch]
        clean = self._clean_side(unit.metric, unit.batch)
        if shared is None:
            x_adv, adv_paths = self._adversarial(unit, d, result)
            adv_seal = self._seal(x_adv, "x_a")
            f_adv = self._score(metric, x_adv, adv_seal)
            f_adv_seal = self._seal(f_adv, "f(x_a)")
        else:
            x_adv, adv_paths, adv_seal, f_adv, f_adv_seal = shared
        dx, f_dx, dx_seal, f_dx_seal = self._defended_clean(unit.metric, unit.batch, d)
        who = f"defence {entry.label!r}"
        defence = self._load(who, entry)
        with torch.no_grad():
            dxa = self._call(who, "purify", lambda: defence.purify(x_adv, seed=self.defence_seed(d, unit.batch)),
                             [adv_seal], diagnose)
        dxa = _check_images(dxa, x_adv, who, defence.preserves_size)
        dxa_seal = self._seal(dxa, "D(x_a)")
        f_dxa = self._score(metric, dxa, dxa_seal, diagnose)
        seals = [clean["seal"], adv_seal, dx_seal, dxa_seal, clean["f_seal"], f_adv_seal, f_dx_seal,
                 self._seal(f_dxa, "f(D(x_a))")]
        cells = CellBatch(clean["x"], x_adv, dx, dxa, clean["f"], f_adv, f_dx, f_dxa, metric, clean["memo"])
        try:
            scores = self._image_scores(cells, seals, diagnose)
        finally:
            _forget(clean["memo"], keep=[clean["x"], x_adv, *(v[0] for v in clean["defended"].values())])
        if self.guard_inputs and not diagnose:
            bad = broken([s for s in seals if s is not None], deep=True)
            if bad is not None:
                self._tainted = True
                raise _Unattributed(bad.name)
        rows = []
        for i, (item, key) in enumerate(zip(items, self.batch_keys[unit.batch])):
            values = [float(v[i]) for v in (clean["f"], f_adv, f_dx, f_dxa)]
            row = cell_row(cfg, unit, d, item, key)
            row.update(f_clean=values[0], f_adv=values[1], f_def_clean=values[2], f_def_adv=values[3],
                       adv_path=adv_paths[i], scores={k: float(v[i]) for k, v in scores.items()})
            bad_values = [n for n, v in zip(("f(x)", "f(x_a)", "f(D(x))", "f(D(x_a))"), values) if not math.isfinite(v)]
            if bad_values:
                row.update(status="failed",
                           error=f"metric {metric.label!r} returned NaN/inf for {', '.join(bad_values)}")
            if item.name in self.example_names:
                data = png_bytes(dxa[i])
                rel = f"examples/{example_name(row)}.png"
                result.files.append((rel, data))
                row["example_path"] = rel
            rows.append(row)
        return rows

    def _image_scores(self, cells: CellBatch, seals: list[Seal | None], deep: bool) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        owner: dict[str, str] = {}
        for score in self.image_scores:
            who = f"score {score.name!r}"
            values = self._call(who, "compute", lambda: score.compute(cells), seals, deep)
            changed = cells.changed_measures() if self.guard_inputs else []
            if changed:
                self._tainted = True
                raise InputModified(modified_message(who, f"the shared pair measure {changed[0]!r}"))
            for name, value in _check_score_values(values, len(cells), who).items():
                if name in owner:
                    raise CellFailure(f"{who} returned the column {name!r}, which score {owner[name]!r} returns "
                                      f"too; one of them must rename it")
                out[name], owner[name] = value, score.name
        return out


def example_name(row: dict[str, Any]) -> str:
    """File name of a cell's example D(x_a): its plugins and its content (batch key), not its image's name,
    so a renamed image's copied row and a fresh run's row name the same file."""
    return _hash("example", row["metric_key"], row["attack_key"], row["defence_key"], row["batch_key"])[:24]


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
    #: Cells of renamed images whose stored rows were copied to the new name (counted as already done).
    relabelled: int = 0


class GridIndex:
    """Which stored cells belong to this grid: their plugins, image name, file hash and batch key are the
    grid's now (store.IDENTITY_COLUMNS). Membership is tested per part, so the grid is never expanded."""

    def __init__(self, config: RunConfig, dataset: Dataset):
        self.plugins = [{p.key() for p in plugins} for plugins in (config.metrics, config.attacks, config.defences)]
        self.images = {(item.name, item.sha256, key) for items in dataset.batches(config.batch_size)
                       for item, key in zip(items, batch_keys(items))}

    def __contains__(self, identity: tuple) -> bool:
        mk, ak, dk, *image = identity
        return mk in self.plugins[0] and ak in self.plugins[1] and dk in self.plugins[2] and tuple(image) in self.images


def grid_keys(config: RunConfig, dataset: Dataset) -> set[tuple[str, ...]]:
    """The identities (store.IDENTITY_COLUMNS) of every cell of this grid, expanded (small grids, tests)."""
    index = GridIndex(config, dataset)
    return {(mk, ak, dk, *image) for mk, ak, dk in itertools.product(*index.plugins) for image in index.images}


def _cells_by_unit(config: RunConfig,
                   dataset: Dataset) -> Iterator[tuple[Unit, list[tuple[int, str, ImageItem, tuple]]]]:
    """For every (metric, batch, attack), in execution order: the unit (all defences) and its cells as
    ``(defence, defence key, image, identity)``."""
    batches = dataset.batches(config.batch_size)
    attack_keys = [entry.key() for entry in config.attacks]
    defence_keys = [defence.key() for defence in config.defences]
    for m, metric in enumerate(config.metrics):
        mk = metric.key()
        for b, items in enumerate(batches):
            images = [(item, (item.name, item.sha256, key)) for item, key in zip(items, batch_keys(items))]
            for a, ak in enumerate(attack_keys):
                cells = [(d, dk, item, (mk, ak, dk, *image))
                         for d, dk in enumerate(defence_keys) for item, image in images]
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
    current = {item.name: (item.sha256, key) for items in dataset.batches(config.batch_size)
               for item, key in zip(items, batch_keys(items))}
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


def run_info(config: RunConfig, dataset: Dataset, limit: int | None = None) -> dict[str, Any]:
    """``run.json``: what the report needs, and what ``iqadef verify`` needs to recompute a cell (the raw
    registry, the registry file it was read from, ``--limit``, torch's thread count)."""
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
        "registry_file": str(Path(config.source).resolve()),
        "limit": limit,
        "torch_threads": torch.get_num_threads(),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class UnitTimeout(IqadefError):
    """A unit ran past ``unit_timeout`` (local executor): the run stops; finished units are kept."""


class ArtifactReader:
    """``ResultStore.artifact`` for the unit thread: its own read-only connection to ``results.sqlite``
    (a SQLite connection belongs to the thread that opened it). A read error counts as a cache miss."""

    def __init__(self, path: Path):
        self.uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        self._db: sqlite3.Connection | None = None

    def __call__(self, key: str) -> tuple[str, str] | None:
        try:
            if self._db is None:
                self._db = sqlite3.connect(self.uri, uri=True, timeout=30, check_same_thread=False)
            row = self._db.execute("SELECT path, sha256 FROM artifacts WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return (row[0], row[1]) if row else None


def describe_unit(config: RunConfig, batches: list[list[ImageItem]], unit: Unit) -> str:
    items = batches[unit.batch]
    images = items[0].name if len(items) == 1 else f"{items[0].name} .. {items[-1].name}"
    return (f"unit {unit.id} (metric {config.metrics[unit.metric].label!r}, attack "
            f"{config.attacks[unit.attack].label!r}, {len(items)} image(s) {images})")


#: Unit threads left computing when their run stopped (a unit past ``unit_timeout``, Ctrl-C mid-unit).
_ABANDONED: list[threading.Thread] = []


def abandoned_units() -> bool:
    """Whether a unit thread is still computing after its run stopped. The process must then end with
    ``os._exit``: a thread busy in torch while the interpreter shuts down aborts it ("terminate called
    without an active exception", exit status 134) instead of exiting with the run's status."""
    return any(thread.is_alive() for thread in _ABANDONED)


def execute_local(worker: Worker, units: list[Unit], timeout: float | None = None) -> Iterator[tuple[Unit, UnitResult]]:
    """Compute ``units`` one after another in a daemon thread; wait at most ``timeout`` s for each.

    A unit past its time stops the run with :class:`UnitTimeout` naming the unit and the plugin call it
    was in (``Worker.activity``). Python cannot stop a thread, so the stuck one is left behind
    (:func:`abandoned_units`; the CLI then exits with ``os._exit``); it writes nothing (the driver is the
    only writer), and every unit yielded before is stored. A thread with no unit to do is joined, so its
    torch state is released before the interpreter exits.
    """
    if not units:
        return
    requests: queue.Queue = queue.Queue()
    replies: queue.Queue = queue.Queue()
    threads = torch.get_num_threads()

    def serve() -> None:
        torch.set_num_threads(threads)  # the driver's: float sums add up in the same order
        while (unit := requests.get()) is not None:
            try:
                replies.put((worker.compute(unit), None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the driver's thread
                replies.put((None, exc))

    thread = threading.Thread(target=serve, name="iqadef-units", daemon=True)
    thread.start()
    busy = False  # a unit was handed to the thread and has not come back
    try:
        for done, unit in enumerate(units):
            requests.put(unit)
            busy = True
            started = time.monotonic()
            while True:
                left = None if timeout is None else timeout - (time.monotonic() - started)
                if left is not None and left <= 0:
                    doing = (f"it was running {worker.activity}" if worker.activity else
                             f"last plugin call: {worker.last_activity}" if worker.last_activity else
                             "it had not called a plugin yet")
                    raise UnitTimeout(
                        f"{describe_unit(worker.config, worker.batches, unit)} did not finish within unit_timeout: "
                        f"{timeout:g} s; {doing}. The run stopped; the {done} unit(s) finished before it are kept. "
                        f"Fix or remove that plugin, or raise `unit_timeout` in the registry (null: no limit), "
                        f"then run again to resume")
                try:
                    result, error = replies.get(timeout=0.5 if left is None else min(0.5, left))
                    break
                except queue.Empty:
                    continue
            busy = False
            if error is not None:
                raise error
            yield unit, result
    finally:
        requests.put(None)  # the thread ends after its unit (a stuck one never does: it is a daemon)
        if busy:
            _ABANDONED.append(thread)
        else:
            thread.join()


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
            info = run_info(config, dataset, limit)
            atomic_write_bytes(output / "run.json", json.dumps(info, indent=2).encode())
            fetch_missing(config.plugins())  # a missing weight file stops the run now, not hours in
            finished = store.finished()
            relabelled = reuse_renamed(store, config, dataset, finished)
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
                    worker = Worker(config, dataset, output, ArtifactReader(store.path), device, registry)
                    stream = execute_local(worker, units, config.unit_timeout)
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
            current = GridIndex(config, dataset)
            in_grid = [key in current for key in everything[list(IDENTITY_COLUMNS)].itertuples(index=False, name=None)]
            df = everything[in_grid].reset_index(drop=True)
            other = len(everything) - len(df)
        finally:
            store.close()
        files = export_tables(df, output)
        failed = int((df["status"] != "ok").sum()) if len(df) else 0
        table = summary_table(df, info)
    return RunSummary(output, total_cells, computed, total_cells - todo_cells, failed,
                      time.perf_counter() - start, table, files, list(dataset.problems), other, relabelled)


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


__all__ = ["CellFailure", "GridIndex", "RunSummary", "Unit", "UnitResult", "UnitTimeout", "Worker", "abandoned_units",
           "batch_keys", "execute_local", "grid_keys", "plan_units", "run_grid", "summary_table"]
