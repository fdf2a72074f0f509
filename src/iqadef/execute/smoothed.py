"""The worker side of certified defences (``certified:``, docs/certified.md): the rows of one unit for one
:class:`~iqadef.core.smoothing.MetricSmoothing`.

A certified defence wraps the metric, not the image: its row has ``f_def_clean = f_s(x)`` and
``f_def_adv = f_s(x_a)``, and in its score columns the certified interval of the clean image
(``cert_lower_clean``, ``cert_upper_clean``) and of the attacked one (``cert_lower_adv``, ``cert_upper_adv``),
the radius ``cert_radius`` (the smoothing's ``eps``), the attack's actual L2 distance ``adv_l2`` and whether
the certificate covers it (``cert_applies``: 1 when ``adv_l2 <= eps``). Per-image scores see the pair as
``D(x) = x``, ``D(x_a) = x_a`` (smoothing changes no pixel), so ``gain_clean`` = |f(x) - f_s(x)| / f(x) is
what smoothing costs on clean images.

Every call goes through the worker's sandbox (execute/sandbox.py: exceptions fail the cells, seals catch
writes into shared tensors), every metric forward inside the smoothing through its score check, and the
smoothing's output through :func:`check_smoothed`; the rows come from the one row builder (execute/rows.py).
``f_s(x)`` is computed once per (metric, batch, certified defence) and reused by every attack. An adaptive attack
(``adaptive: eot``) targets
:class:`~iqadef.core.smoothing.SmoothedMetric`: the mean of the metric over fresh noise each step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from iqadef.core.base import Metric, answer_for
from iqadef.core.cells import CellBatch
from iqadef.core.guard import CellFailure, GuardedMetric, Tripwire
from iqadef.core.smoothing import MetricSmoothing, SmoothedMetric, SmoothedScores, score_bins
from iqadef.execute.rows import build_rows
from iqadef.plan.grid import Unit, grid_defences
from iqadef.store.artifacts import _seed

#: The score columns a certified cell adds (docs/certified.md).
CERT_COLUMNS = (
    "cert_lower_clean",
    "cert_upper_clean",
    "cert_lower_adv",
    "cert_upper_adv",
    "cert_radius",
    "cert_width_clean",
    "adv_l2",
    "cert_applies",
    "cert_fs_adv_inside",
    "cert_f_adv_inside",
)
#: The columns a radius-type certificate (binned smoothing: ``rs``, ``drs``, ``ddrs``, ``densepure``) adds
#: (docs/certified.md).
RADIUS_COLUMNS = (
    "cert_bin_clean",
    "cert_bin_adv",
    "cert_bin_f_clean",
    "cert_radius_clean",
    "cert_radius_adv",
    "cert_abstain_clean",
    "cert_abstain_adv",
    "cert_bin_kept",
)


def is_certified(config: Any, d: int) -> bool:
    """Whether grid defence index ``d`` is a certified defence (past the purifiers)."""
    return d >= len(config.defences)


def smoothing_seed(worker: Any, d: int, b: int) -> int:
    """The noise seed of certified defence ``d`` on batch ``b``: the same for x and x_a (common noise)."""
    cfg = worker.config
    return _seed("certified", cfg.seed, grid_defences(cfg)[d].key(), [i.sha256 for i in worker.batches[b]])


class _CheckedMetric(Metric):
    """The metric as a smoothing sees it: every forward goes through the worker's score check (one real
    number per noisy copy), so a broken metric fails the cells with the metric's name."""

    name = "checked-metric"

    def __init__(self, worker: Any, metric: Metric):
        super().__init__()
        self.worker, self.metric = worker, metric
        answer_for(self, metric)

    @property
    def label(self) -> str:
        return self.metric.label

    def identity(self) -> dict[str, Any]:
        return self.metric.identity()

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.worker.sandbox.score(self.metric, images, None)


def check_smoothed(out: Any, n: int, who: str, certifies: bool) -> SmoothedScores:
    """A smoothing's output: ``SmoothedScores`` with ``n`` finite values; when it certifies, ``lower`` and
    ``upper`` of ``n`` values each (``-inf``/``inf`` allowed: too few samples), ``lower <= value <= upper``."""
    if not isinstance(out, SmoothedScores):
        raise CellFailure(f"{who} returned {type(out).__name__}, expected iqadef.SmoothedScores")

    def vector(value: Any, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) not in ((n,), (n, 1)):
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CellFailure(f"{who} returned {name} of shape {shape}, expected [{n}]: one value per image")
        if value.is_complex() or value.dtype == torch.bool:
            raise CellFailure(f"{who} returned {value.dtype} {name}, expected real numbers")
        value = value.detach().float().reshape(-1).cpu().clone()
        if torch.isnan(value).any():
            raise CellFailure(f"{who} returned NaN in {name}")
        return value

    value = vector(out.value, "value")
    if not torch.isfinite(value).all():
        raise CellFailure(f"{who} returned inf in value")
    if not certifies:
        return SmoothedScores(value)
    if out.lower is None or out.upper is None:
        raise CellFailure(f"{who} certifies but returned no lower/upper bound")
    lower, upper = vector(out.lower, "lower"), vector(out.upper, "upper")
    tol = 1e-5 * (1.0 + value.abs())
    if (lower > value + tol).any() or (upper < value - tol).any():
        raise CellFailure(f"{who} returned a certified interval that does not contain its smoothed value")
    if out.bin is None and out.radius is None:
        return SmoothedScores(value, lower, upper)
    if out.bin is None or out.radius is None:
        raise CellFailure(
            f"{who} returned a {'bin' if out.radius is None else 'radius'} without its "
            f"{'radius' if out.radius is None else 'bin'}: a radius certificate needs both"
        )
    label, radius = vector(out.bin, "bin"), vector(out.radius, "radius")
    if (label != label.round()).any() or (label < -1).any():
        raise CellFailure(f"{who} returned a bin that is not a class index (-1 for abstain, else >= 0)")
    if not torch.isfinite(radius).all() or (radius < 0).any() or (radius[label < 0] != 0).any():
        raise CellFailure(f"{who} returned a radius that is negative, infinite, or non-zero where it abstains")
    return SmoothedScores(value, lower, upper, bin=label, radius=radius)


def _smooth(worker: Any, d: int, m: int, b: int, images: torch.Tensor, seal: Any) -> SmoothedScores:
    smoothing: MetricSmoothing = grid_defences(worker.config)[d]
    who = f"certified defence {smoothing.label!r}"
    smoothing = worker.sandbox.load(who, smoothing)
    metric = _CheckedMetric(worker, worker.config.metrics[m])
    seed = smoothing_seed(worker, d, b)
    out = worker.sandbox.call(who, "smooth", lambda: smoothing.smooth(metric, images, seed=seed), [seal])
    return check_smoothed(out, images.shape[0], who, smoothing.certifies)


def smoothed_clean(worker: Any, m: int, b: int, d: int) -> SmoothedScores:
    """``f_s(x)`` and its interval, computed once per (metric, batch, certified defence)."""
    clean = worker.clean.get(m, b)
    cache = clean.setdefault("certified", {})
    if d not in cache:
        try:
            cache[d] = _smooth(worker, d, m, b, clean["x"], clean["seal"])
        except CellFailure as exc:
            cache[d] = exc
    if isinstance(cache[d], CellFailure):
        raise CellFailure(str(cache[d]))
    return cache[d]


def adversarial_through(worker: Any, unit: Unit, d: int, result: Any) -> tuple[torch.Tensor, list[str]]:
    """x_a of an adaptive attack on the smoothed metric (EOT over the noise), cached as PNGs under a key
    that names the certified defence."""
    cfg = worker.config
    metric, entry, smoothing = cfg.metrics[unit.metric], cfg.attacks[unit.attack], grid_defences(cfg)[d]
    seed = worker.attack_seed(unit.metric, unit.attack, unit.batch)

    def target(tripwire: Tripwire) -> Metric:
        base: Metric = GuardedMetric(metric, tripwire) if worker.guard_inputs else metric
        loaded = worker.sandbox.load(f"certified defence {smoothing.label!r}", smoothing)
        return SmoothedMetric(base, loaded, samples=entry.eot_samples if "eot" in entry.adaptive else 1, seed=seed)

    return worker.adversarial.get(unit, worker.adversarial.keys(unit, "certified", smoothing.key()), target, result)


def smoothed_cells(worker: Any, unit: Unit, d: int, shared: tuple | None, result: Any) -> list[dict[str, Any]]:
    """The rows of certified defence ``d`` (a grid defence index) of ``unit``. ``shared`` is the unit's
    ``(x_a, paths, seal, f(x_a), f(x_a) seal)``, or None when the attack is adaptive (x_a is then computed
    through the smoothing)."""
    cfg = worker.config
    metric, smoothing = cfg.metrics[unit.metric], grid_defences(cfg)[d]
    clean = worker.clean.get(unit.metric, unit.batch)
    if shared is None:
        x_adv, adv_paths = adversarial_through(worker, unit, d, result)
        adv_seal = worker.sandbox.seal(x_adv, "x_a")
        f_adv = worker.sandbox.score(metric, x_adv, adv_seal)
        f_adv_seal = worker.sandbox.seal(f_adv, "f(x_a)")
    else:
        x_adv, adv_paths, adv_seal, f_adv, f_adv_seal = shared
    s_clean = smoothed_clean(worker, unit.metric, unit.batch, d)
    s_adv = _smooth(worker, d, unit.metric, unit.batch, x_adv, adv_seal)
    seals = [clean["seal"], adv_seal, clean["f_seal"], f_adv_seal]
    cells = CellBatch(
        clean["x"], x_adv, clean["x"], x_adv, clean["f"], f_adv, s_clean.value, s_adv.value, metric, clean["memo"]
    )
    scores = worker.score_cells(cells, seals, False)
    extra = _certificate_columns(smoothing, clean["x"], x_adv, f_adv, s_clean, s_adv, metric, clean["f"])
    seed = smoothing_seed(worker, d, unit.batch)

    def example(i: int) -> torch.Tensor:  # what the smoothed metric scores: one noisy copy of x_a
        return (x_adv[i : i + 1] + smoothing.noise(x_adv[i : i + 1], seed)(0, 1)).clamp(0, 1)[0]

    return build_rows(
        cfg,
        unit,
        d,
        worker.batches[unit.batch],
        worker.batch_keys[unit.batch],
        (clean["f"], f_adv, s_clean.value, s_adv.value),
        adv_paths,
        worker.adversarial.queries_of,
        scores,
        lambda i: {k: v[i] for k, v in extra.items()},
        worker.example_names,
        example,
        result.files,
        names=("f(x)", "f(x_a)", "f_s(x)", "f_s(x_a)"),
    )


def _certificate_columns(
    smoothing: MetricSmoothing,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    f_adv: torch.Tensor,
    clean: SmoothedScores,
    adv: SmoothedScores,
    metric: Metric,
    f_clean: torch.Tensor,
) -> dict[str, list[float]]:
    n = x.shape[0]
    l2 = (x_adv.float() - x.float()).flatten(1).norm(dim=1).cpu()
    eps = float(smoothing.eps)
    out: dict[str, list[float]] = {
        "cert_radius": [eps] * n,
        "adv_l2": l2.tolist(),
        "cert_applies": [float(v <= eps) for v in l2.tolist()],
    }
    if clean.bin is not None and adv.bin is not None:
        out.update(_radius_columns(smoothing, l2, clean, adv, metric, f_clean))
    if clean.lower is None or adv.lower is None:
        return out
    lo, hi = clean.lower, clean.upper
    out.update(
        cert_lower_clean=lo.tolist(),
        cert_upper_clean=hi.tolist(),
        cert_lower_adv=adv.lower.tolist(),
        cert_upper_adv=adv.upper.tolist(),
        cert_width_clean=(hi - lo).tolist(),
        cert_fs_adv_inside=((adv.value >= lo) & (adv.value <= hi)).float().tolist(),
        cert_f_adv_inside=((f_adv.cpu() >= lo) & (f_adv.cpu() <= hi)).float().tolist(),
    )
    return out


def _radius_columns(
    smoothing: MetricSmoothing,
    l2: torch.Tensor,
    clean: SmoothedScores,
    adv: SmoothedScores,
    metric: Metric,
    f_clean: torch.Tensor,
) -> dict[str, list[float]]:
    """The bin of each image, clean and attacked, its certified radius, the bin of the plain metric's f(x) (the
    "correct" class of certified accuracy) and whether the attacked image kept the clean bin where the
    certificate covers it (``adv_l2 < radius``, not abstained; NaN elsewhere)."""
    low, high = (float(v) for v in metric.range)
    bins = getattr(smoothing, "bins", None)
    truth = (
        score_bins(f_clean.detach().float().cpu(), low, high, int(bins)).float()
        if bins
        else torch.full_like(clean.bin, math.nan)
    )
    covered = (clean.bin >= 0) & (l2 < clean.radius)
    kept = torch.where(covered, (adv.bin == clean.bin).float(), torch.full_like(clean.radius, math.nan))
    return {
        "cert_bin_clean": clean.bin.tolist(),
        "cert_bin_adv": adv.bin.tolist(),
        "cert_bin_f_clean": truth.tolist(),
        "cert_radius_clean": clean.radius.tolist(),
        "cert_radius_adv": adv.radius.tolist(),
        "cert_abstain_clean": (clean.bin < 0).float().tolist(),
        "cert_abstain_adv": (adv.bin < 0).float().tolist(),
        "cert_bin_kept": kept.tolist(),
    }
