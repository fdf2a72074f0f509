"""Certified defences: a defence that wraps the *metric*, ``f -> f_s``, instead of purifying the image.

A :class:`MetricSmoothing` plugin (registry section ``certified:``, hook ``iqadef_register_certified``)
scores each image by the statistics of ``f`` over Gaussian-noised copies ``x + N(0, sigma^2 I)`` and, where
its maths allows, certifies an interval ``[lower, upper]`` that holds, with probability at least
``1 - alpha`` over its noise, the smoothed score of *every* ``x'`` with ``||x' - x||_2 <= eps``.

The certificate maths here is not plugin-specific: the order-statistic bounds of median smoothing
(Chiang et al., NeurIPS 2020, "Detection as regression: certified object detection by median smoothing")
and the expectation bound of a bounded regressor (Salman et al., NeurIPS 2019, Lemma 2 / Kumar et al.,
NeurIPS 2020, "Certifying confidence via randomized smoothing", the "expectation" baseline) with a
Hoeffding confidence interval. docs/certified.md says what is guaranteed under which assumptions.

The noise of image ``i`` comes from its own generator (seeded from the call's seed and ``i``), one copy at a
time, so the values do not depend on the noise batch size (``batch``: how many noisy copies go through the
metric in one forward) nor on the other images of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from iqadef.core.base import Metric, Plugin, answer_for
from iqadef.core.params import Param


@dataclass
class SmoothedScores:
    """What :meth:`MetricSmoothing.smooth` returns for a batch of ``B`` images.

    ``value`` the smoothed score ``f_s(x)`` (``[B]``); ``lower``/``upper`` the certified interval of the
    smoothed score over the L2 ball of radius ``eps`` around each image (``[B]``, ``-inf``/``inf`` where
    the samples are too few to certify), or None when the smoothing certifies nothing.

    Radius-type certificates (randomized smoothing of a binned score, Cohen et al. 2019) also give ``bin``,
    the smoothed class of each image (``-1``: abstained), and ``radius``, the L2 radius within which that
    class cannot change (0 where abstained).
    """

    value: torch.Tensor
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    bin: torch.Tensor | None = None
    radius: torch.Tensor | None = None


@dataclass
class FeatureSplit:
    """A metric's score as ``head(backbone(x))``, for smoothing in feature space (``fs-iqa``).

    ``backbone`` maps images ``[B, 3, H, W]`` to features ``[B, d]``; ``head`` maps features ``[k, d]`` to
    scores ``[k]`` (the metric's own score of ``x`` is ``head(backbone(x))``). ``lipschitz`` is a *provable*
    upper bound ``L`` of the backbone's L2 Lipschitz constant on images of this size (``||backbone(x + d) -
    backbone(x)||_2 <= L ||d||_2`` for every x, d): an estimate is not enough, the input-space certificate
    rests on it. ``how`` says in a line how the bound was computed. A metric opts in with a method
    ``feature_split(size) -> FeatureSplit`` (``size`` the images' ``(H, W)``)."""

    backbone: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    lipschitz: float
    how: str = ""


# -- the certificates --------------------------------------------------------------------------------
def percentile_shift(eps: float, sigma: float, p: float = 0.5) -> tuple[float, float]:
    """``(p_lower, p_upper) = (Phi(Phi^-1(p) - eps/sigma), Phi(Phi^-1(p) + eps/sigma))``.

    Chiang et al. (2020), Theorem 1: the ``p``-th percentile of ``f(x' + N(0, sigma^2 I))`` for any
    ``||x' - x||_2 <= eps`` lies between the ``p_lower``-th and the ``p_upper``-th percentiles at ``x``."""
    from scipy import stats  # lazily: `import iqadef` should not load scipy.stats (~1 s)

    z = float(stats.norm.ppf(p))
    return float(stats.norm.cdf(z - eps / sigma)), float(stats.norm.cdf(z + eps / sigma))


def order_statistic_ranks(n: int, p_lower: float, p_upper: float, alpha: float) -> tuple[int | None, int | None]:
    """1-based ranks ``(k_l, k_u)`` of the sorted samples that bound the ``p_lower``- and ``p_upper``-th
    percentiles from below and above, each with probability ``>= 1 - alpha/2`` (so both: ``>= 1 - alpha``).

    ``X_(k) <= q_p`` exactly when at least ``k`` of the ``n`` samples are ``<= q_p``; that count is
    Binomial(n, >= p), so ``P(X_(k) <= q_p) >= 1 - BinomCDF(k - 1; n, p)``: ``k_l`` is the largest ``k`` with
    ``BinomCDF(k - 1; n, p_lower) <= alpha/2``. Symmetrically ``k_u`` is the smallest ``k`` with
    ``BinomCDF(k - 1; n, p_upper) >= 1 - alpha/2``. None when no rank qualifies (too few samples)."""
    from scipy import stats  # lazily: `import iqadef` should not load scipy.stats (~1 s)

    half = alpha / 2
    ks = torch.arange(1, n + 1, dtype=torch.float64).numpy()
    cdf_low = stats.binom.cdf(ks - 1, n, p_lower)
    ok_low = [int(k) for k, c in zip(ks, cdf_low) if c <= half]
    cdf_up = stats.binom.cdf(ks - 1, n, p_upper)
    ok_up = [int(k) for k, c in zip(ks, cdf_up) if c >= 1 - half]
    return (max(ok_low) if ok_low else None), (min(ok_up) if ok_up else None)


def median_certificate(
    samples: torch.Tensor, eps: float, sigma: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Median smoothing of ``samples`` (``[B, n]``: f of n noisy copies per image): the empirical median
    and the certified interval from the order statistics at ``Phi(-+eps/sigma)`` (Chiang et al. 2020).

    The median is the lower median ``X_((n+1)//2)`` (``torch.median``'s), so it is always a sample."""
    n = samples.shape[1]
    ordered = samples.sort(dim=1).values
    value = ordered[:, (n - 1) // 2]
    k_l, k_u = order_statistic_ranks(n, *percentile_shift(eps, sigma), alpha)
    full = lambda v: torch.full_like(value, v)  # noqa: E731
    lower = ordered[:, k_l - 1] if k_l is not None else full(-math.inf)
    upper = ordered[:, k_u - 1] if k_u is not None else full(math.inf)
    return value, lower, upper


def hoeffding_radius(n: int, span: float, alpha: float) -> float:
    """Half-width ``t`` with ``P(|mean - E| >= t) <= alpha`` for ``n`` i.i.d. values in an interval of width
    ``span`` (Hoeffding 1963): ``t = span * sqrt(ln(2/alpha) / (2n))``."""
    return span * math.sqrt(math.log(2.0 / alpha) / (2.0 * n))


def mean_certificate(
    samples: torch.Tensor, eps: float, sigma: float, alpha: float, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean smoothing of ``samples`` (``[B, n]``) of a regressor bounded in ``[low, high]`` (values outside
    are clipped to it first: the certified function is the clipped one).

    Salman et al. (2019), Lemma 2: for ``h`` with values in [0, 1], ``x -> sigma * Phi^-1(E h(x + N(0,
    sigma^2 I)))`` is 1-Lipschitz, so ``g(x') in [Phi(Phi^-1(g(x)) - eps/sigma), Phi(Phi^-1(g(x)) + eps/sigma)]``
    for ``||x' - x|| <= eps``. ``g(x)`` is known only up to the Hoeffding radius (confidence ``1 - alpha``),
    so the lower end starts from ``mean - t`` and the upper from ``mean + t``, then rescaled to ``[low, high]``."""
    span = float(high - low)
    clipped = samples.clamp(low, high)
    value = clipped.mean(dim=1)
    t = hoeffding_radius(samples.shape[1], span, alpha)
    shift = eps / sigma
    unit = ((value - low) / span).double()
    below = (unit - t / span).clamp(0, 1)
    above = (unit + t / span).clamp(0, 1)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    lower = low + span * normal.cdf(normal.icdf(below) - shift)  # icdf(0) = -inf -> cdf 0: the bound is `low`
    upper = low + span * normal.cdf(normal.icdf(above) + shift)
    return value, lower.to(value.dtype), upper.to(value.dtype)


def score_bins(scores: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """The class of each score when ``[low, high]`` is cut into ``bins`` equal bins, as the reference's
    ``MetricClassifier`` does (``katiashh/certified-iqa-defenses`` ``ccrf/calc_rs_*.py``): class 0 for
    ``s <= low``, ``k`` (1..bins) for ``e_(k-1) < s <= e_k``, ``bins + 1`` above the last edge (and for NaN,
    which none of the reference's comparisons accept). The edges are accumulated ``low + d + d + ...`` in
    Python floats and compared in the scores' dtype, as the reference's loop over a tensor does."""
    width = (high - low) / bins
    edges, edge = [float(low)], float(low)
    for _ in range(bins):
        edge += width
        edges.append(edge)
    dtype = scores.dtype if scores.dtype.is_floating_point else torch.float32
    values = scores.to(dtype)
    index = torch.searchsorted(torch.tensor(edges, dtype=dtype, device=values.device), values.contiguous())
    return torch.where(torch.isnan(values), torch.full_like(index, bins + 1), index).long()


def bin_edges(
    label: torch.Tensor, low: float, high: float, bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lower, representative, upper)`` score of each class of :func:`score_bins`: the bin's edges and its
    midpoint (``low`` for class 0, whose lower edge is ``-inf``; ``high`` for the top class)."""
    width = (high - low) / bins
    k = label.double()
    lower = torch.where(k <= 0, torch.full_like(k, -math.inf), low + (k - 1) * width)
    upper = torch.where(k >= bins + 1, torch.full_like(k, math.inf), low + k * width)
    middle = torch.where(
        k <= 0, torch.full_like(k, low), torch.where(k >= bins + 1, torch.full_like(k, high), low + (k - 0.5) * width)
    )
    return lower, middle, upper


def clopper_pearson_lower(successes: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound of a binomial proportion (Clopper-Pearson): the
    reference's ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``."""
    if successes <= 0:
        return 0.0
    from scipy import stats  # lazily: `import iqadef` should not load scipy.stats (~1 s)

    return float(stats.beta.ppf(alpha, successes, n - successes + 1))


def rs_certificate(
    selection: torch.Tensor, estimation: torch.Tensor, sigma: float, alpha: float, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cohen et al. (ICML 2019) ``CERTIFY`` for each image: the top class of the ``n0`` selection samples
    (``[B, n0]`` class indices; ties to the lowest class, as numpy's argmax), its count among the ``n``
    estimation samples (``[B, n]``), the Clopper-Pearson lower bound ``pA`` of its probability; abstain
    (class -1, radius 0) when ``pA < 0.5``, else radius ``sigma * Phi^-1(pA)``. Returns ``(class, radius,
    chosen)``: ``chosen`` is the selected class also where the certificate abstains."""
    from scipy import stats  # lazily

    chosen = torch.stack([torch.bincount(row, minlength=classes).argmax() for row in selection.long()])
    n = estimation.shape[1]
    label = torch.empty_like(chosen)
    radius = torch.zeros(chosen.shape[0], dtype=torch.float64)
    for i, c in enumerate(chosen.tolist()):
        p_a = clopper_pearson_lower(int((estimation[i] == c).sum()), n, alpha)
        if p_a < 0.5:
            label[i] = -1
        else:
            label[i] = c
            radius[i] = sigma * float(stats.norm.ppf(p_a))
    return label, radius, chosen


# -- the contract ------------------------------------------------------------------------------------
def smoothing_params(
    sigma: float = 0.25, n: int = 100, eps: float = 0.25, alpha: float = 0.001, batch: int = 32
) -> tuple[Param, ...]:
    """The parameters every built-in smoothing takes (a plugin may add its own after them)."""
    return (
        Param(
            "sigma",
            float,
            sigma,
            "standard deviation of the Gaussian noise added to the pixels ([0, 1] scale)",
            low=1e-6,
            presets=(0.12, 0.25, 0.5),
        ),
        Param("n", int, n, "noisy copies per image (n metric forwards per image)", low=1, presets=(64, 100, 300, 1000)),
        Param(
            "eps",
            float,
            eps,
            "L2 radius (over all 3*H*W values) of the perturbations the interval covers",
            low=0.0,
            presets=(0.1, 0.25, 0.5, 1.0),
        ),
        Param(
            "alpha",
            float,
            alpha,
            "the certificate holds with probability >= 1 - alpha over the noise",
            low=1e-12,
            high=0.5,
        ),
        Param("batch", int, batch, "noisy copies per metric forward (memory/speed only; values do not change)", low=1),
    )


class MetricSmoothing(Plugin):
    """A certified defence: wraps the metric, ``f -> f_s``, and certifies an interval of ``f_s`` per image.

    Implement :meth:`smooth` (most plugins only :meth:`aggregate`, the statistics of the noisy scores;
    :meth:`noisy_scores` draws and batches the copies). Declare :attr:`certifies` (whether ``lower`` and
    ``upper`` are returned). Parameters ``sigma``, ``n``, ``eps``, ``alpha``, ``batch``
    (:func:`smoothing_params`) are what the runner and the adaptive attacks read.
    """

    kind = "certified"
    #: whether :meth:`smooth` returns a certified interval (``lower``/``upper``) for the radius ``eps``
    certifies: ClassVar[bool] = True
    params = smoothing_params()
    sigma: float
    n: int
    eps: float
    alpha: float
    batch: int

    # -- what a plugin implements -------------------------------------------------------------------
    def check_metric(self, metric: Metric, where: str) -> None:
        """Raise ConfigError (naming ``where`` and the key) when this configuration cannot smooth ``metric``;
        the registry calls it for each metric of a run before any work. Default: every metric will do."""

    def smooth(self, metric: Metric, images: torch.Tensor, *, seed: int) -> SmoothedScores:
        """``f_s`` and its certified interval for ``images`` ``[B, 3, H, W]``; all noise drawn from ``seed``."""
        samples = self.noisy_scores(metric, images, seed=seed)
        value, lower, upper = self.aggregate(samples, metric)
        return SmoothedScores(value, lower, upper)

    def aggregate(self, samples: torch.Tensor, metric: Metric) -> tuple[torch.Tensor, Any, Any]:
        """``(value, lower, upper)`` from the noisy scores ``samples`` ``[B, n]``."""
        raise NotImplementedError

    def base(self, metric: Metric, noisy: torch.Tensor) -> torch.Tensor:
        """The function that is smoothed, on noisy copies (``[k, 3, H, W]``, not clipped): by default the
        metric of the copies clipped to [0, 1] (a metric's input contract). Any deterministic function
        of the noisy image keeps the certificate valid (DMS-IQA puts a denoiser here)."""
        return metric.score(noisy.clamp(0.0, 1.0))

    def base_sampler(
        self, images: torch.Tensor, seed: int
    ) -> Callable[[Metric, torch.Tensor, list[int]], torch.Tensor]:
        """``score(metric, noisy, owners)``: the base function of one call on noisy copies whose row ``r`` is a
        copy of image ``owners[r]``. Default: :meth:`base` (deterministic). A randomized base function (a
        reverse diffusion, DensePure) draws its own randomness here, from generators of each image seeded from
        ``seed``, so its values do not depend on the noise batch nor on the other images either."""
        return lambda metric, noisy, owners: self.base(metric, noisy)

    # -- shared machinery ------------------------------------------------------------------------------
    def samples_per_image(self) -> int:
        """Metric forwards of one :meth:`smooth` per image (``iqadef plan`` counts them)."""
        return int(self.n)

    def noise_sigma(self) -> float:
        """The standard deviation of the noise actually added (``sigma``; a plugin whose base function fixes it
        otherwise, like a diffusion model's discrete noise levels, says so here)."""
        return float(self.sigma)

    def noise(self, images: torch.Tensor, seed: int) -> Callable[[int, int], torch.Tensor]:
        """``draw(i, k)``: the next ``k`` noise tensors of image ``i`` (``[k, 3, H, W]``, already times
        :meth:`noise_sigma`)."""
        gens = []
        for i in range(images.shape[0]):
            g = torch.Generator(device=images.device)
            g.manual_seed((int(seed) * 1_000_003 + i) % (2**63))
            gens.append(g)
        shape = tuple(images.shape[1:])
        std = self.noise_sigma()

        def draw(i: int, k: int) -> torch.Tensor:
            return (
                torch.stack(
                    [torch.randn(shape, generator=gens[i], device=images.device, dtype=images.dtype) for _ in range(k)]
                )
                * std
            )

        return draw

    def noisy_scores(
        self, metric: Metric, images: torch.Tensor, *, seed: int, samples: int | None = None
    ) -> torch.Tensor:
        """``[B, n]``: the base function of ``n`` noisy copies of each image, ``batch`` copies per forward
        (copies of consecutive images share a forward when ``batch`` exceeds ``n``)."""
        n = self.n if samples is None else samples
        draw = self.noise(images, seed)
        base = self.base_sampler(images, seed)
        todo = [(i, j) for i in range(images.shape[0]) for j in range(n)]
        out = torch.empty(images.shape[0], n, dtype=torch.float32, device=images.device)
        with torch.no_grad():
            for start in range(0, len(todo), self.batch):
                chunk = todo[start : start + self.batch]
                noisy = torch.cat([images[i : i + 1] + draw(i, 1) for i, _ in chunk])
                scores = base(metric, noisy, [i for i, _ in chunk]).reshape(-1).float()
                for (i, j), v in zip(chunk, scores):
                    out[i, j] = v
        return out

    def surrogate(self, metric: Metric, images: torch.Tensor, *, seed: int, samples: int) -> torch.Tensor:
        """A differentiable stand-in for ``f_s`` that adaptive attacks (EOT) follow: the mean of the base
        function over ``samples`` noisy copies (the expectation that smoothing estimates; SmoothAdv, Salman
        et al. 2019). Median smoothing has no useful gradient of its own."""
        draw = self.noise(images.detach(), seed)
        base = self.base_sampler(images.detach(), seed)
        owners = list(range(images.shape[0]))
        total = 0.0
        for _ in range(samples):
            noise = torch.cat([draw(i, 1) for i in owners])
            total = total + base(metric, images + noise, owners)
        return total / samples

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {"certifies": cls.certifies}


def binned_params(
    sigma: float = 0.12,
    n: int = 1000,
    n0: int = 100,
    eps: float = 0.05,
    alpha: float = 0.001,
    bins: int = 10,
    batch: int = 32,
) -> tuple[Param, ...]:
    """The parameters of a binned (radius-certifying) smoothing; defaults are the reference's
    (``ccrf/calc_rs_*.py``: sigma 0.12, n 1000 estimation + 100 selection samples, alpha 0.001, 10 bins)."""
    return smoothing_params(sigma=sigma, n=n, eps=eps, alpha=alpha, batch=batch) + (
        Param(
            "n0",
            int,
            n0,
            "noisy copies per image that select the class (Cohen et al.'s n0), drawn "
            "before and apart from the n that certify it",
            low=1,
        ),
        Param("bins", int, bins, "equal bins the metric's range is cut into (plus one below and one above)", low=1),
    )


class BinnedSmoothing(MetricSmoothing):
    """Randomized smoothing of a *binned* score (Cohen et al., ICML 2019, as the reference applies it to IQA
    metrics in ``katiashh/certified-iqa-defenses`` ``ccrf/calc_rs_*.py``): the metric's range ``[low, high]``
    is cut into ``bins`` classes, the smoothed class is the most probable class under Gaussian noise, and
    the certificate is an L2 radius within which it cannot change (with probability ``>= 1 - alpha``), or
    an abstention. ``value`` is the class's midpoint score; ``lower``/``upper`` its edges where the radius
    covers ``eps`` (``-inf``/``inf`` otherwise). The radius uses ``sigma`` even where the noise actually
    added is larger (:meth:`noise_sigma`, diffusion-denoised smoothing): as the reference does; a larger
    noise only makes that radius conservative."""

    params = binned_params()
    n0: int
    bins: int

    def samples_per_image(self) -> int:
        return int(self.n0) + int(self.n)

    def smooth(self, metric: Metric, images: torch.Tensor, *, seed: int) -> SmoothedScores:
        low, high = (float(v) for v in metric.range)
        if not high > low:
            raise ValueError(f"{self.name}: the metric's range {metric.range} is empty; binning needs low < high")
        samples = self.noisy_scores(metric, images, seed=seed, samples=self.n0 + self.n)
        classes = score_bins(samples, low, high, self.bins)
        label, radius, chosen = rs_certificate(
            classes[:, : self.n0], classes[:, self.n0 :], float(self.sigma), self.alpha, self.bins + 2
        )
        lower, value, upper = bin_edges(chosen, low, high, self.bins)
        covered = (label >= 0) & (radius >= self.eps)
        lower = torch.where(covered, lower, torch.full_like(lower, -math.inf))
        upper = torch.where(covered, upper, torch.full_like(upper, math.inf))
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32
        return SmoothedScores(value.to(dtype), lower.to(dtype), upper.to(dtype), bin=label, radius=radius.to(dtype))


class SmoothedMetric(Metric):
    """The smoothed metric as an attack target (adaptive attacks through a certified defence): its score is
    :meth:`MetricSmoothing.surrogate` with fresh noise on every call (EOT, as :class:`~iqadef.core.adaptive.
    DefendedMetric` draws fresh defence randomness per step), replayable from ``seed``."""

    name = "smoothed-metric"

    def __init__(self, metric: Metric, smoothing: MetricSmoothing, *, samples: int = 8, seed: int = 0):
        super().__init__()
        self.metric, self.smoothing, self.samples, self.seed = metric, smoothing, max(1, int(samples)), seed
        self.calls = 0
        answer_for(self, metric)

    @property
    def label(self) -> str:
        return f"{self.metric.label}|{self.smoothing.label}"

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "metric": self.metric.identity(),
            "smoothing": self.smoothing.identity(),
            "samples": self.samples,
        }

    def score(self, images: torch.Tensor) -> torch.Tensor:
        seed = (int(self.seed) * 7919 + self.calls) % (2**62)
        self.calls += 1
        return self.smoothing.surrogate(self.metric, images, seed=seed, samples=self.samples)
