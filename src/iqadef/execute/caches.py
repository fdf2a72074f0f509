"""What a worker computes once and reuses: the clean side of a (metric, batch) and the adversarial images.

* :class:`CleanSide`: f(x), and D(x), f(D(x)) per defence, computed once per (metric, batch) and reused by
  every attack of the batch (units are ordered metric -> batch -> attack); a defence whose D(x) or f(D(x))
  failed fails the same way for every attack without being called again.
* :class:`AdversarialImages`: the x_a of (metric, attack, image, seed) is computed once, quantised to 8 bits,
  stored as a PNG under a content-hash key and reused by every defence (and by a resumed run).

Seeds are drawn from the run's seed, the plugins' keys and the batch's image hashes, never from the order
of the work (:func:`attack_seed`, :func:`defence_seed`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from iqadef.core.base import Metric
from iqadef.core.dataset import Dataset, ImageItem
from iqadef.core.guard import CellFailure, InputModified, Seal, Tripwire, check_images
from iqadef.core.query import QueryMetric
from iqadef.execute.sandbox import Sandbox
from iqadef.plan.grid import Unit
from iqadef.store.artifacts import _hash, _seed, adv_file, png_bytes, png_native, png_queries, quantize, read_png


def defence_seed(config: Any, items: Sequence[ImageItem], d: int) -> int:
    """The seed of purifier ``d`` on a batch of ``items``."""
    return _seed("defence", config.seed, config.defences[d].key(), [i.sha256 for i in items])


def attack_seed(config: Any, items: Sequence[ImageItem], m: int, a: int) -> int:
    """The seed of attack ``a`` on metric ``m`` and a batch of ``items``."""
    return _seed("attack", config.seed, config.metrics[m].key(), config.attacks[a].key(), [i.sha256 for i in items])


class CleanSide:
    """The clean side of the current (metric, batch): ``x``, ``f(x)``, D(x) and f(D(x)) per defence, with
    their seals; the state dict :meth:`get` returns also holds the batch's pair-measure ``memo`` (and
    certified defences' f_s(x), execute/smoothed.py)."""

    def __init__(self, config: Any, dataset: Dataset, batches: list[list[ImageItem]], sandbox: Sandbox):
        self.config = config
        self.dataset = dataset
        self.batches = batches
        self.sandbox = sandbox
        self._key: tuple[int, int] | None = None
        self._state: dict[str, Any] = {}
        #: Defences whose D(x) failed for the current (metric, batch): the same reason for every attack.
        self._defence_failures: tuple[tuple[int, int] | None, dict[int, str]] = (None, {})

    def forget(self) -> None:
        """Compute the clean side again on the next :meth:`get` (a plugin wrote into a shared tensor)."""
        self._key = None

    def get(self, m: int, b: int) -> dict[str, Any]:
        """x, f(x) and their seals for metric ``m`` on batch ``b`` (computed on the first call)."""
        if self._key == (m, b):
            return self._state
        self._key, self._state = None, {}
        metric = self.sandbox.load(f"metric {self.config.metrics[m].label!r}", self.config.metrics[m])
        x = self.dataset.load(self.batches[b]).to(self.sandbox.device)
        seal = self.sandbox.seal(x, "the clean images x")
        f_clean = self.sandbox.score(metric, x, seal)
        self._key = (m, b)
        self._state = {
            "x": x,
            "seal": seal,
            "f": f_clean,
            "f_seal": self.sandbox.seal(f_clean, "f(x)"),
            "dx": {},
            "defended": {},
            "memo": {},
        }
        return self._state

    def failed_defences(self, m: int, b: int) -> dict[int, str]:
        """Defence index -> why its D(x) or f(D(x)) failed, for metric ``m`` on batch ``b``."""
        key, failures = self._defence_failures
        return failures if key == (m, b) else {}

    def defended(self, m: int, b: int, d: int) -> tuple[torch.Tensor, torch.Tensor, Seal | None, Seal | None]:
        """D(x), f(D(x)) and their seals, computed once per (metric, batch, defence)."""
        clean = self.get(m, b)
        if self._defence_failures[0] != (m, b):
            self._defence_failures = ((m, b), {})
        failures = self._defence_failures[1]
        if d in failures:
            raise CellFailure(failures[d])
        if d not in clean["defended"]:
            try:
                dx, dx_seal = self.defended_image(m, b, d)
                f_dx = self.sandbox.score(self.config.metrics[m], dx, dx_seal)
            except CellFailure as exc:
                failures[d] = str(exc)
                raise
            self.set_defended(clean, d, f_dx)
        return clean["defended"][d]

    def defended_image(self, m: int, b: int, d: int) -> tuple[torch.Tensor, Seal | None]:
        """D(x) and its seal, computed once per (metric, batch, defence) (failures: :meth:`defended`)."""
        clean = self.get(m, b)
        if d not in clean["dx"]:
            entry = self.config.defences[d]
            who = f"defence {entry.label!r}"
            defence = self.sandbox.load(who, entry)
            x = clean["x"]
            with torch.no_grad():
                dx = self.sandbox.call(
                    who,
                    "purify",
                    lambda: defence.purify(x, seed=defence_seed(self.config, self.batches[b], d)),
                    [clean["seal"]],
                )
            dx = check_images(dx, x, who, defence.preserves_size)
            clean["dx"][d] = (dx, self.sandbox.seal(dx, "D(x)"))
        return clean["dx"][d]

    def set_defended(self, clean: dict[str, Any], d: int, f_dx: torch.Tensor) -> None:
        """Keep f(D(x)) of defence ``d`` (scored by the caller) for the batch's other attacks."""
        dx, dx_seal = clean["dx"][d]
        clean["defended"][d] = (dx, f_dx, dx_seal, self.sandbox.seal(f_dx, "f(D(x))"))


class AdversarialImages:
    """The adversarial images of a run: looked up by content key in this unit's PNGs, then in the run
    folder's cache (``artifact_lookup``: key -> (relative path, sha256)), else computed and returned as PNGs
    in the unit's result. Also what each PNG records: a black-box attack's queries, a budget search's value."""

    def __init__(
        self,
        config: Any,
        batches: list[list[ImageItem]],
        run_dir: Path,
        artifact_lookup: Callable[[str], tuple[str, str] | None],
        sandbox: Sandbox,
        clean: CleanSide,
    ):
        self.config = config
        self.batches = batches
        self.run_dir = run_dir
        self.artifact_lookup = artifact_lookup
        self.sandbox = sandbox
        self.clean = clean
        self._unit_pngs: dict[str, bytes] = {}  # this unit's adversarial PNGs, to rebuild x_a from
        self._adv_queries: dict[str, int | None] = {}  # adv_path -> a black-box attack's queries of that image
        self._adv_native: dict[str, float] = {}  # adv_path -> the native value a budget search chose (core/budget.py)

    def start_unit(self) -> None:
        """Forget the previous unit's PNGs and what they recorded."""
        self._unit_pngs = {}
        self._adv_queries = {}
        self._adv_native = {}

    def end_unit(self) -> None:
        """Let the unit's PNGs go (they are in its result)."""
        self._unit_pngs = {}

    def keys(self, unit: Unit, *scope: Any) -> list[str]:
        """Cache keys of x_a for the unit's images; ``scope`` names what an adaptive attack went through
        (a defence's key; ``"certified"`` and a smoothing's key), ``None`` for a plain attack.

        The image's file hash and the attack's seed (drawn from the batch) are in the key; the same file
        twice in one batch gets its occurrence number too (their noise differs)."""
        cfg = self.config
        metric, entry = cfg.metrics[unit.metric], cfg.attacks[unit.attack]
        seed = attack_seed(cfg, self.batches[unit.batch], unit.metric, unit.attack)
        keys: list[str] = []
        seen: dict[str, int] = {}
        for item in self.batches[unit.batch]:
            copy = seen[item.sha256] = seen.get(item.sha256, -1) + 1
            extra = [copy] if copy else []
            keys.append(
                _hash(
                    "adv",
                    metric.identity(),
                    entry.attack.identity(),
                    entry.adaptive,
                    entry.eot_samples,
                    *scope,
                    item.sha256,
                    seed,
                    *extra,
                )
            )
        return keys

    def get(
        self, unit: Unit, keys: list[str], target: Callable[[Tripwire], Metric], result: Any
    ) -> tuple[torch.Tensor, list[str]]:
        """x_a under cache ``keys``: read back when every image's PNG is cached, else the unit's attack run on
        ``target(tripwire)`` (the metric, or what wraps it), checked, quantised to 8 bits and stored as PNGs
        (in ``result.files`` and ``result.artifacts``)."""
        entry = self.config.attacks[unit.attack]
        items = self.batches[unit.batch]
        seed = attack_seed(self.config, items, unit.metric, unit.attack)
        paths = [adv_file(k) for k in keys]
        cached = [self._cached(k, rel, item.size) for k, rel, item in zip(keys, paths, items)]
        if all(c is not None for c in cached):
            return torch.stack(cached).to(self.sandbox.device), paths  # type: ignore[arg-type]
        x = self.clean.get(unit.metric, unit.batch)["x"]
        tripwire = Tripwire()
        attacked = target(tripwire)
        who = f"attack {entry.label!r}"
        attack = self.sandbox.load(who, entry.attack)
        if attack.black_box:  # scores only, queries counted (core/query.py)
            attacked = QueryMetric(attacked, x.shape[0])
        x_adv = self.sandbox.call(who, "run", lambda: attack.run(attacked, x.clone(), seed=seed))
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

    def queries_of(self, adv_path: str) -> float:
        """The queries a black-box attack made for the x_a at ``adv_path``; NaN for other attacks."""
        count = self._adv_queries.get(adv_path)
        return float("nan") if count is None else float(count)

    def native_of(self, adv_path: str) -> dict[str, float]:
        """``{"native_value": v}`` for an x_a made by a budget search (core/budget.py), else nothing."""
        value = self._adv_native.get(adv_path)
        return {} if value is None else {"native_value": float(value)}


__all__ = ["AdversarialImages", "CleanSide", "attack_seed", "defence_seed"]
