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
* each unit has ``unit_timeout`` seconds (execute/executors.py: a unit past it stops the run).

The seams, one module each: calling a plugin (:mod:`.sandbox`), what is computed once and reused
(:mod:`.caches`), the rows (:mod:`.rows`); this module schedules a unit's defences over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from iqadef.analysis.scores import image_score_classes
from iqadef.config.registry import RunConfig
from iqadef.core.adaptive import DefendedMetric
from iqadef.core.base import Metric
from iqadef.core.cells import CellBatch, CellGroup
from iqadef.core.dataset import Dataset
from iqadef.core.guard import CellFailure, GuardedMetric, Seal, Tripwire, broken, check_images
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.execute.caches import AdversarialImages, CleanSide, attack_seed, defence_seed
from iqadef.execute.redraw import redraw_scores, wants_redraws
from iqadef.execute.rows import build_rows
from iqadef.execute.sandbox import Sandbox
from iqadef.execute.smoothed import is_certified, smoothed_cells
from iqadef.plan.grid import Unit, batch_keys, rows_of_failed_unit


@dataclass
class UnitResult:
    rows: list[dict[str, Any]]
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (relative path, PNG bytes)
    artifacts: list[tuple[str, str, str]] = field(default_factory=list)  # (key, relative path, sha256)


class _Unattributed(CellFailure):
    """A shared tensor changed during one defence's cells without a version bump (``.data`` writes):
    the defence's cells are computed again with a fingerprint after every call, to name the plugin."""


class Worker:
    """Computes work units: schedules a unit's defences over the clean side, the adversarial images and
    the plugin calls of its seams.

    * :attr:`sandbox` (execute/sandbox.py) runs every plugin method: whatever it raises fails the cells of
      that call, and the tensors handed to it are sealed (:mod:`iqadef.core.guard`): version counters after
      every call, fingerprints after every metric and defence call on the clean side and once per defence
      after its scores (a fingerprint failure there computes that defence again with a fingerprint after
      every call, to name the plugin). A broken seal fails the cells, names the plugin, and the shared
      tensors are rebuilt from their sources, so later cells are right. ``guard_inputs=False`` turns the
      seals off (the benchmark's baseline only).
    * :attr:`clean` and :attr:`adversarial` (execute/caches.py): what is computed once and reused.
    * rows come from :func:`~iqadef.execute.rows.build_rows`, as certified cells' do (execute/smoothed.py).
    """

    @renamed_registry_keyword
    def __init__(
        self,
        config: RunConfig,
        dataset: Dataset,
        run_dir: Path,
        artifact_lookup: Callable[[str], tuple[str, str] | None],
        device: torch.device,
        plugins: InstalledPlugins | None = None,
        *,
        guard_inputs: bool = True,
    ):
        self.config = config
        self.dataset = dataset
        self.batches = dataset.batches(config.batch_size)
        self.batch_keys = [batch_keys(items) for items in self.batches]
        self.run_dir = run_dir
        self.device = device
        self.guard_inputs = guard_inputs
        self.example_names = {item.name for item in dataset.items[: config.examples]}
        self.image_scores = [cls() for cls in image_score_classes(plugins or installed_plugins())]
        self.sandbox = Sandbox(device, guard_inputs=guard_inputs)
        self.clean = CleanSide(config, dataset, self.batches, self.sandbox)
        self.adversarial = AdversarialImages(config, self.batches, run_dir, artifact_lookup, self.sandbox, self.clean)
        #: Called with the number of cells just finished, from the thread computing the unit, as soon as
        #: they are (per defence or group of defences); over a unit the calls add up to its row count.
        self.on_cells: Callable[[int], None] | None = None

    @property
    def activity(self) -> str | None:
        """The plugin call running now (None between calls): named when a unit times out."""
        return self.sandbox.activity

    @property
    def last_activity(self) -> str | None:
        return self.sandbox.last_activity

    def defence_seed(self, d: int, b: int) -> int:
        return defence_seed(self.config, self.batches[b], d)

    def attack_seed(self, m: int, a: int, b: int) -> int:
        return attack_seed(self.config, self.batches[b], m, a)

    def _adversarial(self, unit: Unit, d: int | None, result: UnitResult) -> tuple[torch.Tensor, list[str]]:
        """x_a for the unit's batch (per defence when the attack is adaptive), cached as PNGs."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        seed = self.attack_seed(unit.metric, unit.attack, unit.batch)

        def target(tripwire: Tripwire) -> Metric:
            if d is None:
                return GuardedMetric(metric, tripwire) if self.guard_inputs else metric
            defence = self.sandbox.load(f"defence {cfg.defences[d].label!r}", cfg.defences[d])
            return DefendedMetric(
                metric,
                defence,
                samples=entry.eot_samples if "eot" in entry.adaptive else 1,
                seed=seed,
                tripwire=tripwire if self.guard_inputs else None,
            )

        keys = self.adversarial.keys(unit, cfg.defences[d].key() if d is not None else None)
        return self.adversarial.get(unit, keys, target, result)

    # -- one unit ---------------------------------------------------------------------------------
    def compute(self, unit: Unit) -> UnitResult:
        result = UnitResult(rows=[])
        self.adversarial.start_unit()
        shared: tuple | None = None
        todo = list(unit.defences)
        alone = 0  # how many of todo's first defences are computed one by one (their group failed)
        while todo:
            d = todo[0]
            if self.sandbox.tainted:  # a plugin wrote into a shared tensor: rebuild them from their sources
                self.sandbox.tainted, shared = False, None
                self.clean.forget()
            try:
                if shared is None:
                    shared = self._unit_state(unit, result)
            except CellFailure as exc:  # the metric or the attack failed: every cell of the unit did
                failed = [r for d in todo for r in rows_of_failed_unit(self.config, self.batches, unit, d, str(exc))]
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
                rows = rows_of_failed_unit(self.config, self.batches, unit, d, str(exc))
            result.rows.extend(rows)
            self._progress(len(rows))
            todo.pop(0)
        if self.sandbox.tainted:
            self.sandbox.tainted = False
            self.clean.forget()
        self.adversarial.end_unit()
        return result

    # -- a unit's defences together ------------------------------------------------------------
    def _groupable(self, unit: Unit, todo: list[int], shared: tuple | None) -> list[int]:
        """The first defences of ``todo`` that can be computed together: all but after an adaptive attack
        (x_a per defence), a certified defence, or a defence whose D(x) or f(D(x)) already failed."""
        if shared is None:
            return []
        failed = self.clean.failed_defences(unit.metric, unit.batch)
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
        clean = self.clean.get(m, b)
        x_adv, adv_paths, adv_seal, f_adv, f_adv_seal = shared
        try:
            images = {}
            for d in ds:
                dx, dx_seal = self.clean.defended_image(m, b, d)
                entry = cfg.defences[d]
                who = f"defence {entry.label!r}"
                defence = self.sandbox.load(who, entry)
                with torch.no_grad():
                    dxa = self.sandbox.call(
                        who, "purify", lambda: defence.purify(x_adv, seed=self.defence_seed(d, b)), [adv_seal]
                    )
                dxa = check_images(dxa, x_adv, who, defence.preserves_size)
                images[d] = (dxa, self.sandbox.seal(dxa, "D(x_a)"))
            pieces = [("dx", d, *clean["dx"][d]) for d in ds if d not in clean["defended"]]
            pieces += [("dxa", d, *images[d]) for d in ds]
            scored = self._score_pieces(metric, pieces)
        except CellFailure:  # (a broken seal has set _tainted: the caller rebuilds the shared tensors first)
            return None
        for (kind, d, _, _), f in zip(pieces, scored):  # f(D(x)) kept for the batch's other attacks
            if kind == "dx":
                self.clean.set_defended(clean, d, f)
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
                seals = [
                    clean["seal"],
                    adv_seal,
                    dx_seal,
                    dxa_seal,
                    clean["f_seal"],
                    f_adv_seal,
                    f_dx_seal,
                    self.sandbox.seal(cells[d].f_def_adv, "f(D(x_a))"),
                ]
                try:
                    scores = self.score_cells(cells[d], seals, False)
                    if wants_redraws(cfg, unit, d):  # the robustness protocol's flag (e): fresh draws of D
                        scores.update(redraw_scores(self, unit, d, x_adv, clean["f"], cells[d].f_def_adv, adv_seal))
                    if self.guard_inputs:
                        bad = broken([s for s in seals if s is not None], deep=True)
                        if bad is not None:
                            self.sandbox.tainted = True
                            raise _Unattributed(bad.name)
                    done.append(
                        self._rows(
                            unit, d, clean, x_adv, adv_paths, f_adv, f_dx, cells[d].f_def_adv, dxa, scores, result
                        )
                    )
                except _Unattributed:
                    done.append(self._diagnose(unit, d, result))
                except CellFailure as exc:
                    done.append(rows_of_failed_unit(self.config, self.batches, unit, d, str(exc)))
                if self.sandbox.tainted:  # the shared tensors are rebuilt before the group's other defences
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
                    out[call[0]] = self.sandbox.score(metric, images, seal, deep=True)
                    continue
                images = torch.cat([pieces[i][2] for i in call])
                names = sorted({"D(x)" if pieces[i][0] == "dx" else "D(x_a)" for i in call})
                values = self.sandbox.score(metric, images, self.sandbox.seal(images, " and ".join(names)), deep=True)
                start = 0
                for i in call:
                    n = pieces[i][2].shape[0]
                    out[i] = values[start : start + n].clone()
                    start += n
        return out  # type: ignore[return-value]

    def _progress(self, cells: int) -> None:
        if self.on_cells is not None and cells:
            self.on_cells(cells)

    def _unit_state(self, unit: Unit, result: UnitResult) -> tuple:
        """The clean side and, unless the attack is adaptive, x_a and f(x_a) (shared by every defence)."""
        self.clean.get(unit.metric, unit.batch)
        if self.config.attacks[unit.attack].adaptive != "none":
            return (None,)
        x_adv, paths = self._adversarial(unit, None, result)
        seal = self.sandbox.seal(x_adv, "x_a")
        f_adv = self.sandbox.score(self.config.metrics[unit.metric], x_adv, seal)
        return ((x_adv, paths, seal, f_adv, self.sandbox.seal(f_adv, "f(x_a)")),)

    def _diagnose(self, unit: Unit, d: int, result: UnitResult) -> list[dict[str, Any]]:
        """Defence ``d``'s cells changed a shared tensor unseen by its version counter: compute them again
        from rebuilt tensors with a fingerprint after every call, to name the plugin; they fail either way."""
        self.sandbox.tainted = False
        self.clean.forget()
        reason = (
            "a plugin of these cells (the defence, the metric or a score) modified a shared tensor in place "
            "(not reproduced when computed again)"
        )
        try:
            shared = self._unit_state(unit, UnitResult(rows=[]))
            self._cells(unit, d, shared[0], UnitResult(rows=[]), diagnose=True)
        except CellFailure as exc:
            reason = str(exc)
        self.sandbox.tainted = True
        return rows_of_failed_unit(self.config, self.batches, unit, d, reason)

    def _cells(
        self, unit: Unit, d: int, shared: tuple | None, result: UnitResult, diagnose: bool = False
    ) -> list[dict[str, Any]]:
        """The rows of defence ``d`` of ``unit``. Seals are checked by version after every call and by
        fingerprint at the end (``diagnose``: by fingerprint after every call)."""
        if is_certified(self.config, d):  # a certified defence (docs/certified.md): execute/smoothed.py
            return smoothed_cells(self, unit, d, shared, result)
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.defences[d]
        clean = self.clean.get(unit.metric, unit.batch)
        if shared is None:
            x_adv, adv_paths = self._adversarial(unit, d, result)
            adv_seal = self.sandbox.seal(x_adv, "x_a")
            f_adv = self.sandbox.score(metric, x_adv, adv_seal)
            f_adv_seal = self.sandbox.seal(f_adv, "f(x_a)")
        else:
            x_adv, adv_paths, adv_seal, f_adv, f_adv_seal = shared
        dx, f_dx, dx_seal, f_dx_seal = self.clean.defended(unit.metric, unit.batch, d)
        who = f"defence {entry.label!r}"
        defence = self.sandbox.load(who, entry)
        with torch.no_grad():
            dxa = self.sandbox.call(
                who,
                "purify",
                lambda: defence.purify(x_adv, seed=self.defence_seed(d, unit.batch)),
                [adv_seal],
                diagnose,
            )
        dxa = check_images(dxa, x_adv, who, defence.preserves_size)
        dxa_seal = self.sandbox.seal(dxa, "D(x_a)")
        f_dxa = self.sandbox.score(metric, dxa, dxa_seal, diagnose)
        seals = [
            clean["seal"],
            adv_seal,
            dx_seal,
            dxa_seal,
            clean["f_seal"],
            f_adv_seal,
            f_dx_seal,
            self.sandbox.seal(f_dxa, "f(D(x_a))"),
        ]
        cells = CellBatch(clean["x"], x_adv, dx, dxa, clean["f"], f_adv, f_dx, f_dxa, metric, clean["memo"])
        try:
            scores = self.score_cells(cells, seals, diagnose)
        finally:
            _forget(clean["memo"], keep=[clean["x"], x_adv, *(v[0] for v in clean["defended"].values())])
        if wants_redraws(cfg, unit, d):  # the robustness protocol's flag (e): fresh draws of D
            scores.update(redraw_scores(self, unit, d, x_adv, clean["f"], f_dxa, adv_seal))
        if self.guard_inputs and not diagnose:
            bad = broken([s for s in seals if s is not None], deep=True)
            if bad is not None:
                self.sandbox.tainted = True
                raise _Unattributed(bad.name)
        return self._rows(unit, d, clean, x_adv, adv_paths, f_adv, f_dx, f_dxa, dxa, scores, result)

    def _rows(
        self,
        unit: Unit,
        d: int,
        clean: dict[str, Any],
        x_adv: torch.Tensor,
        adv_paths: list[str],
        f_adv: torch.Tensor,
        f_dx: torch.Tensor,
        f_dxa: torch.Tensor,
        dxa: torch.Tensor,
        scores: dict[str, torch.Tensor],
        result: UnitResult,
    ) -> list[dict[str, Any]]:
        return build_rows(
            self.config,
            unit,
            d,
            self.batches[unit.batch],
            self.batch_keys[unit.batch],
            (clean["f"], f_adv, f_dx, f_dxa),
            adv_paths,
            self.adversarial.queries_of,
            scores,
            lambda i: self.adversarial.native_of(adv_paths[i]),
            self.example_names,
            lambda i: dxa[i],
            result.files,
        )

    def score_cells(self, cells: CellBatch, seals: list[Seal | None], deep: bool) -> dict[str, torch.Tensor]:
        """The per-image score columns of ``cells``, every score plugin called in the sandbox."""
        return self.sandbox.image_scores(self.image_scores, cells, seals, deep)


def _forget(memo: dict, keep: list[torch.Tensor]) -> None:
    """Drop memoised pair measures that involve images other than ``keep`` (bounded memory).

    A memoised tensor computed from kept images only (D(x) resized back to x's size) is kept too, with the
    measures that involve it: x vs D(x) is the same pair for every attack of the batch."""
    kept = {id(t) for t in keep}
    grown = True
    while grown:
        before = len(kept)
        for a, b, value, *_ in memo.values():
            if isinstance(value, torch.Tensor) and id(a) in kept and id(b) in kept:
                kept.add(id(value))
        grown = len(kept) > before
    for key in [k for k, v in memo.items() if id(v[0]) not in kept or id(v[1]) not in kept]:
        del memo[key]
