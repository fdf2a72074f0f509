"""The worker: computes one work unit (clean side, adversarial images, defences, scores) and checks every
plugin output against its contract.

For each cell it records f(x), f(x_a), f(D(x)), f(D(x_a)) and every per-image score (PSNR, SSIM, ...).
Work is organised so that nothing is computed twice:

* the order is metric -> image batch -> attack -> defences, one batch of images in memory at a time;
* f(x) and D(x), f(D(x)) are computed once per (metric, batch) and reused by every attack;
* the adversarial image of (metric, attack, image, seed) is computed once, quantised to 8 bits,
  stored as a PNG under a content-hash key and reused by every defence (and by a resumed run);
* a *work unit* is (metric, attack, batch); its rows are written in one transaction, so a killed run
  resumes at the first unfinished unit and ends with exactly the table of an uninterrupted run.

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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..adaptive import DefendedMetric
from ..base import Metric
from ..cells import CellBatch, CellGroup
from ..dataset import Dataset
from ..guard import (
    CellFailure,
    GuardedMetric,
    InputModified,
    Seal,
    Tripwire,
    broken,
    check_images,
    modified_message,
)
from ..plugins import PluginRegistry, get_registry
from ..query import QueryMetric
from ..registry import RunConfig
from ..scores import image_score_classes
from ..store import CELL_COLUMNS
from .artifacts import _hash, _seed, adv_file, example_name, png_bytes, png_native, png_queries, quantize, read_png
from .plan import Unit, batch_keys, cell_row, failed_rows
from .redraw import redraw_scores, wants_redraws
from .smoothed import is_certified, smoothed_cells


@dataclass
class UnitResult:
    rows: list[dict[str, Any]]
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (relative path, PNG bytes)
    artifacts: list[tuple[str, str, str]] = field(default_factory=list)  # (key, relative path, sha256)


class _Unattributed(CellFailure):
    """A shared tensor changed during one defence's cells without a version bump (``.data`` writes):
    the defence's cells are computed again with a fingerprint after every call, to name the plugin."""


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
        self._adv_queries: dict[str, int | None] = {}  # adv_path -> a black-box attack's queries of that image
        self._adv_native: dict[str, float] = {}  # adv_path -> the native value a budget search chose (core/budget.py)
        self._tainted = False  # a plugin wrote into a shared tensor: rebuild before the next cells
        #: Called with the number of cells just finished, from the thread computing the unit, as soon as
        #: they are (per defence or group of defences); over a unit the calls add up to its row count.
        self.on_cells: Callable[[int], None] | None = None

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
                       "dx": {}, "defended": {}, "memo": {}}
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
            try:
                dx, dx_seal = self._defended_image(m, b, d)
                f_dx = self._score(self.config.metrics[m], dx, dx_seal)
            except CellFailure as exc:
                failures[d] = str(exc)
                raise
            self._set_defended(clean, d, f_dx)
        return clean["defended"][d]

    def _defended_image(self, m: int, b: int, d: int) -> tuple[torch.Tensor, Seal | None]:
        """D(x) and its seal, computed once per (metric, batch, defence) (failures: :meth:`_defended_clean`)."""
        clean = self._clean_side(m, b)
        if d not in clean["dx"]:
            entry = self.config.defences[d]
            who = f"defence {entry.label!r}"
            defence = self._load(who, entry)
            x = clean["x"]
            with torch.no_grad():
                dx = self._call(who, "purify", lambda: defence.purify(x, seed=self.defence_seed(d, b)),
                                [clean["seal"]])
            dx = check_images(dx, x, who, defence.preserves_size)
            clean["dx"][d] = (dx, self._seal(dx, "D(x)"))
        return clean["dx"][d]

    def _set_defended(self, clean: dict[str, Any], d: int, f_dx: torch.Tensor) -> None:
        dx, dx_seal = clean["dx"][d]
        clean["defended"][d] = (dx, f_dx, dx_seal, self._seal(f_dx, "f(D(x))"))

    def defence_seed(self, d: int, b: int) -> int:
        return _seed("defence", self.config.seed, self.config.defences[d].key(), [i.sha256 for i in self.batches[b]])

    def attack_seed(self, m: int, a: int, b: int) -> int:
        return _seed("attack", self.config.seed, self.config.metrics[m].key(), self.config.attacks[a].key(),
                     [i.sha256 for i in self.batches[b]])

    # -- adversarial images ---------------------------------------------------------------------
    def adv_keys(self, unit: Unit, *scope: Any) -> list[str]:
        """Cache keys of x_a for the unit's images; ``scope`` names what an adaptive attack went through
        (a defence's key; ``"certified"`` and a smoothing's key), ``None`` for a plain attack.

        The image's file hash and the attack's seed (drawn from the batch) are in the key; the same file
        twice in one batch gets its occurrence number too (their noise differs)."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)
        keys, seen = [], {}
        for item in self.batches[unit.batch]:
            copy = seen[item.sha256] = seen.get(item.sha256, -1) + 1
            extra = [copy] if copy else []
            keys.append(_hash("adv", metric.identity(), entry.attack.identity(), entry.adaptive, entry.eot_samples,
                              *scope, item.sha256, seed, *extra))
        return keys

    def _adversarial(self, unit: Unit, d: int | None, result: UnitResult) -> tuple[torch.Tensor, list[str]]:
        """x_a for the unit's batch (per defence when the attack is adaptive), cached as PNGs."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)

        def target(tripwire: Tripwire) -> Metric:
            if d is None:
                return GuardedMetric(metric, tripwire) if self.guard_inputs else metric
            defence = self._load(f"defence {cfg.defences[d].label!r}", cfg.defences[d])
            return DefendedMetric(metric, defence, samples=entry.eot_samples if "eot" in entry.adaptive else 1,
                                  seed=seed, tripwire=tripwire if self.guard_inputs else None)

        return self.attack_cached(unit, self.adv_keys(unit, cfg.defences[d].key() if d is not None else None),
                                  target, result)

    def attack_cached(self, unit: Unit, keys: list[str], target: Callable[[Tripwire], Metric],
                      result: UnitResult) -> tuple[torch.Tensor, list[str]]:
        """x_a under cache ``keys``: read back when every image's PNG is cached, else the unit's attack run on
        ``target(tripwire)`` (the metric, or what wraps it), checked, quantised to 8 bits and stored as PNGs."""
        entry = self.config.attacks[unit.attack]
        items = self.batches[unit.batch]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)
        paths = [adv_file(k) for k in keys]
        cached = [self._cached(k, rel, item.size) for k, rel, item in zip(keys, paths, items)]
        if all(c is not None for c in cached):
            return torch.stack(cached).to(self.device), paths  # type: ignore[arg-type]
        x = self._clean_side(unit.metric, unit.batch)["x"]
        tripwire = Tripwire()
        attacked = target(tripwire)
        who = f"attack {entry.label!r}"
        attack = self._load(who, entry.attack)
        if attack.black_box:  # scores only, queries counted (core/query.py)
            attacked = QueryMetric(attacked, x.shape[0])
        x_adv = self._call(who, "run", lambda: attack.run(attacked, x.clone(), seed=seed))
        if tripwire.message is not None:  # a metric or defence wrote into the attack's images
            raise InputModified(tripwire.message)
        x_adv = quantize(check_images(x_adv.detach() if isinstance(x_adv, torch.Tensor) else x_adv, x, who))
        queries = attacked.queries.tolist() if isinstance(attacked, QueryMetric) else [None] * len(keys)
        natives = list(getattr(attack, "chosen_values", None) or [None] * len(keys))
        for k, rel, img, count, native in zip(keys, paths, x_adv, queries, natives):
            data = png_bytes(img, queries=count, native=native)
            self._adv_queries[rel] = count
            if native is not None:
                self._adv_native[rel] = native
            self._unit_pngs[k] = data
            result.files.append((rel, data))
            result.artifacts.append((k, rel, hashlib.sha256(data).hexdigest()))
        return x_adv, paths

    def _cached(self, key: str, rel: str, size: tuple[int, int]) -> torch.Tensor | None:
        """A cached x_a: from this unit's PNGs, else the run folder's (sha256 checked); None if absent,
        corrupted or of another size than the image now loads at (``dataset.max_side`` changed). The
        black-box queries the PNG records are kept for the cell's ``queries`` column."""
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
            self._adv_queries[rel] = png_queries(data)
            native = png_native(data)
            if native is not None:
                self._adv_native[rel] = native
        except Exception:  # noqa: BLE001
            return None
        return image if tuple(image.shape[1:]) == tuple(size) else None

    # -- one unit ---------------------------------------------------------------------------------
    def compute(self, unit: Unit) -> UnitResult:
        result = UnitResult(rows=[])
        self._unit_pngs = {}
        self._adv_queries = {}
        self._adv_native = {}
        shared: tuple | None = None
        todo = list(unit.defences)
        alone = 0  # how many of todo's first defences are computed one by one (their group failed)
        while todo:
            d = todo[0]
            if self._tainted:  # a plugin wrote into a shared tensor: rebuild them from their sources
                self._tainted, self._clean_key, shared = False, None, None
            try:
                if shared is None:
                    shared = self._unit_state(unit, result)
            except CellFailure as exc:  # the metric or the attack failed: every cell of the unit did
                failed = [r for d in todo for r in failed_rows(self.config, self.batches, unit, d, str(exc))]
                result.rows.extend(failed)
                self._progress(len(failed))
                break
            group = self._groupable(unit, todo, shared[0]) if not alone else []
            if len(group) > 1:
                done = self._group(unit, group, shared[0], result)
                if done is None:  # a defence or the metric failed: compute the group one by one, as before
                    alone = len(group)
                for rows in done or ():
                    result.rows.extend(rows)
                    self._progress(len(rows))
                    todo.pop(0)
                continue
            alone = max(0, alone - 1)
            try:
                rows = self._cells(unit, d, shared[0], result)
            except _Unattributed:
                rows = self._diagnose(unit, d, result)
            except CellFailure as exc:
                rows = failed_rows(self.config, self.batches, unit, d, str(exc))
            result.rows.extend(rows)
            self._progress(len(rows))
            todo.pop(0)
        if self._tainted:
            self._tainted, self._clean_key = False, None
        self._unit_pngs = {}
        return result

    # -- a unit's defences together ------------------------------------------------------------
    def _groupable(self, unit: Unit, todo: list[int], shared: tuple | None) -> list[int]:
        """The first defences of ``todo`` that can be computed together: all but after an adaptive attack
        (x_a per defence), a certified defence, or a defence whose D(x) or f(D(x)) already failed."""
        if shared is None:
            return []
        key, failures = self._defence_failures
        failed = failures if key == (unit.metric, unit.batch) else {}
        group = []
        for d in todo:
            if is_certified(self.config, d) or d in failed:
                break
            group.append(d)
        return group

    def _group(self, unit: Unit, ds: list[int], shared: tuple, result: UnitResult) -> list[list[dict[str, Any]]] | None:
        """The rows of defences ``ds`` (a prefix of them if a score broke a seal: the rest are computed again
        from rebuilt tensors), with D(x), D(x_a) of each, the metric on all of them in as few calls as
        ``metric_batch`` allows, and the per-image scores of every defence in one :class:`CellGroup`.

        None if a defence or the metric failed: the caller computes these defences one by one (the path of
        an adaptive attack), which fails exactly the cells it did before batching and names the plugin."""
        cfg = self.config
        m, b = unit.metric, unit.batch
        metric = cfg.metrics[m]
        clean = self._clean_side(m, b)
        x_adv, adv_paths, adv_seal, f_adv, f_adv_seal = shared
        try:
            images = {}
            for d in ds:
                dx, dx_seal = self._defended_image(m, b, d)
                entry = cfg.defences[d]
                who = f"defence {entry.label!r}"
                defence = self._load(who, entry)
                with torch.no_grad():
                    dxa = self._call(who, "purify", lambda: defence.purify(x_adv, seed=self.defence_seed(d, b)),
                                     [adv_seal])
                dxa = check_images(dxa, x_adv, who, defence.preserves_size)
                images[d] = (dxa, self._seal(dxa, "D(x_a)"))
            pieces = [("dx", d, *clean["dx"][d]) for d in ds if d not in clean["defended"]]
            pieces += [("dxa", d, *images[d]) for d in ds]
            scored = self._score_pieces(metric, pieces)
        except CellFailure:  # (a broken seal has set _tainted: the caller rebuilds the shared tensors first)
            return None
        for (kind, d, _, _), f in zip(pieces, scored):  # f(D(x)) kept for the batch's other attacks
            if kind == "dx":
                self._set_defended(clean, d, f)
        cells = {}
        for (kind, d, dxa, _), f_dxa in zip(pieces, scored):
            if kind == "dxa":
                dx, f_dx, _, _ = clean["defended"][d]
                cells[d] = CellBatch(clean["x"], x_adv, dx, dxa, clean["f"], f_adv, f_dx, f_dxa, metric, clean["memo"])
        group = CellGroup([cells[d] for d in ds])
        done: list[list[dict[str, Any]]] = []
        try:
            for d in ds:
                dxa, dxa_seal = images[d]
                dx, f_dx, dx_seal, f_dx_seal = clean["defended"][d]
                seals = [clean["seal"], adv_seal, dx_seal, dxa_seal, clean["f_seal"], f_adv_seal, f_dx_seal,
                         self._seal(cells[d].f_def_adv, "f(D(x_a))")]
                try:
                    scores = self._image_scores(cells[d], seals, False)
                    if wants_redraws(cfg, unit, d):  # the robustness protocol's flag (e): fresh draws of D
                        scores.update(redraw_scores(self, unit, d, x_adv, clean["f"], cells[d].f_def_adv, adv_seal))
                    if self.guard_inputs:
                        bad = broken([s for s in seals if s is not None], deep=True)
                        if bad is not None:
                            self._tainted = True
                            raise _Unattributed(bad.name)
                    done.append(self._rows(unit, d, clean, x_adv, adv_paths, f_adv, f_dx, cells[d].f_def_adv,
                                           dxa, scores, result))
                except _Unattributed:
                    done.append(self._diagnose(unit, d, result))
                except CellFailure as exc:
                    done.append(failed_rows(self.config, self.batches, unit, d, str(exc)))
                if self._tainted:  # the shared tensors are rebuilt before the group's other defences
                    break
        finally:
            group.release()
            _forget(clean["memo"], keep=[clean["x"], x_adv, *(v[0] for v in clean["defended"].values())])
        return done

    def _score_pieces(self, metric: Metric, pieces: list[tuple]) -> list[torch.Tensor]:
        """f of each ``(kind, d, images, seal)`` piece, pieces of one shape scored together in calls of at most
        ``metric_batch`` images (never splitting a piece), in order; results as from one call per piece."""
        limit = self.config.metric_batch or 0
        out: list[torch.Tensor | None] = [None] * len(pieces)
        by_shape: dict[tuple, list[int]] = {}
        for i, piece in enumerate(pieces):
            by_shape.setdefault((tuple(piece[2].shape[1:]), piece[2].dtype), []).append(i)
        for members in by_shape.values():
            calls: list[list[int]] = []
            for i in members:
                n = pieces[i][2].shape[0]
                if calls and sum(pieces[j][2].shape[0] for j in calls[-1]) + n <= limit:
                    calls[-1].append(i)
                else:
                    calls.append([i])
            for call in calls:
                if len(call) == 1:
                    _, _, images, seal = pieces[call[0]]
                    # fingerprinted now, not only after the defence's scores: an identity defence hands
                    # the metric x_a itself, which every defence of the group shares
                    out[call[0]] = self._score(metric, images, seal, deep=True)
                    continue
                images = torch.cat([pieces[i][2] for i in call])
                names = sorted({"D(x)" if pieces[i][0] == "dx" else "D(x_a)" for i in call})
                values = self._score(metric, images, self._seal(images, " and ".join(names)), deep=True)
                start = 0
                for i in call:
                    n = pieces[i][2].shape[0]
                    out[i] = values[start:start + n].clone()
                    start += n
        return out  # type: ignore[return-value]

    def _progress(self, cells: int) -> None:
        if self.on_cells is not None and cells:
            self.on_cells(cells)

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
        if is_certified(self.config, d):  # a certified defence (docs/certified.md): core/run/smoothed.py
            return smoothed_cells(self, unit, d, shared, result)
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.defences[d]
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
        dxa = check_images(dxa, x_adv, who, defence.preserves_size)
        dxa_seal = self._seal(dxa, "D(x_a)")
        f_dxa = self._score(metric, dxa, dxa_seal, diagnose)
        seals = [clean["seal"], adv_seal, dx_seal, dxa_seal, clean["f_seal"], f_adv_seal, f_dx_seal,
                 self._seal(f_dxa, "f(D(x_a))")]
        cells = CellBatch(clean["x"], x_adv, dx, dxa, clean["f"], f_adv, f_dx, f_dxa, metric, clean["memo"])
        try:
            scores = self._image_scores(cells, seals, diagnose)
        finally:
            _forget(clean["memo"], keep=[clean["x"], x_adv, *(v[0] for v in clean["defended"].values())])
        if wants_redraws(cfg, unit, d):  # the robustness protocol's flag (e): fresh draws of D
            scores.update(redraw_scores(self, unit, d, x_adv, clean["f"], f_dxa, adv_seal))
        if self.guard_inputs and not diagnose:
            bad = broken([s for s in seals if s is not None], deep=True)
            if bad is not None:
                self._tainted = True
                raise _Unattributed(bad.name)
        return self._rows(unit, d, clean, x_adv, adv_paths, f_adv, f_dx, f_dxa, dxa, scores, result)

    def _rows(self, unit: Unit, d: int, clean: dict[str, Any], x_adv: torch.Tensor, adv_paths: list[str],
              f_adv: torch.Tensor, f_dx: torch.Tensor, f_dxa: torch.Tensor, dxa: torch.Tensor,
              scores: dict[str, torch.Tensor], result: UnitResult) -> list[dict[str, Any]]:
        cfg = self.config
        metric = cfg.metrics[unit.metric]
        items = self.batches[unit.batch]
        rows = []
        for i, (item, key) in enumerate(zip(items, self.batch_keys[unit.batch])):
            values = [float(v[i]) for v in (clean["f"], f_adv, f_dx, f_dxa)]
            row = cell_row(cfg, unit, d, item, key)
            row.update(f_clean=values[0], f_adv=values[1], f_def_clean=values[2], f_def_adv=values[3],
                       adv_path=adv_paths[i], queries=self.queries_of(adv_paths[i]),
                   scores={**{k: float(v[i]) for k, v in scores.items()}, **self.native_of(adv_paths[i])})
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

    def queries_of(self, adv_path: str) -> float:
        """The queries a black-box attack made for the x_a at ``adv_path``; NaN for other attacks."""
        count = self._adv_queries.get(adv_path)
        return float("nan") if count is None else float(count)

    def native_of(self, adv_path: str) -> dict[str, float]:
        """``{"native_value": v}`` for an x_a made by a budget search (core/budget.py), else nothing."""
        value = self._adv_native.get(adv_path)
        return {} if value is None else {"native_value": float(value)}

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


def _forget(memo: dict, keep: list[torch.Tensor]) -> None:
    """Drop memoised pair measures that involve images other than ``keep`` (bounded memory)."""
    kept = {id(t) for t in keep}
    for key in [k for k, v in memo.items() if id(v[0]) not in kept or id(v[1]) not in kept]:
        del memo[key]
