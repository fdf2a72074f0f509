"""``fs-iqa``: feature-space smoothing (Shumitskaya, Vatolin & Antsiferova, arXiv 2508.05516, "FS-IQA:
Certified feature smoothing for robust image quality assessment"): the Gaussian noise goes on the metric's
backbone features, not on the pixels; one backbone forward per image, ``n`` forwards of the head.

Certificate: median smoothing (Chiang et al., NeurIPS 2020) of the head in feature space, at the feature
radius ``L * eps``, ``L`` the backbone's Lipschitz bound: ``||delta||_2 <= eps`` moves the features by at
most ``L * eps``, so the interval of every feature point within ``L * eps`` holds every image within ``eps``.
The paper relates the two radii through the largest singular value of the backbone's Jacobian; its code is
not public, and a Jacobian's norm at ``x`` bounds nothing beyond ``x``: here ``L`` is a provable bound that
the metric exposes (``feature_split``, docs/certified.md), and docs/fidelity.md records the difference.
"""

from __future__ import annotations

from typing import Any

import torch

from iqadef import (
    ConfigError,
    FeatureSplit,
    Metric,
    MetricSmoothing,
    Param,
    SmoothedScores,
    hookimpl,
    jacobian_norm,
    median_certificate,
    smoothing_params,
)


def feature_split_of(metric: Any) -> Any:
    """The metric (or the metric a runner's wrapper holds, ``.metric``) whose ``feature_split`` to use, or
    None when none of them has one."""
    seen = 0
    while metric is not None and seen < 8:
        if callable(getattr(metric, "feature_split", None)):
            return metric
        metric, seen = getattr(metric, "metric", None), seen + 1
    return None


class FeatureSmoothing(MetricSmoothing):
    """Median of head(backbone(x) + N(0, sigma^2 I)): noise on the features, certified via the backbone's bound.

    Certified for ||delta||_2 <= eps through the backbone's Lipschitz bound L: the median-smoothing interval
    at feature radius L * eps (Chiang et al. 2020; FS-IQA, Shumitskaya et al. 2025).

    `sigma` is in feature units (the metric's backbone output), not pixels. Only metrics that expose a
    feature split with a provable bound can be smoothed (tiny-iqa); others are refused at config time."""

    name = "fs-iqa"
    version = "1"
    batch: int
    bound: str
    jacobian_iters: int
    params = (
        Param(
            "sigma",
            float,
            0.25,
            "standard deviation of the Gaussian noise added to the backbone's features (feature units, not pixels)",
            low=1e-6,
            presets=(0.12, 0.25, 0.5),
        ),
        smoothing_params()[1],  # n
        Param(
            "eps",
            float,
            1e-10,
            "L2 radius (over all 3*H*W pixel values) the interval covers; the feature "
            "radius is L * eps, L the backbone's Lipschitz bound (tiny-iqa: 1.8e8 at 224x224, times the "
            "resize's norm for other sizes)",
            low=0.0,
            presets=(1e-10, 1e-9, 1e-8),
        ),
        smoothing_params()[3],  # alpha
        Param("batch", int, 256, "noisy feature vectors per head forward (memory/speed only)", low=1),
        Param(
            "bound",
            str,
            "provable",
            "how the feature radius is tied to eps: 'provable' (the metric's global "
            "Lipschitz bound, a certificate) or 'jacobian' (the paper's largest singular value of the "
            "backbone's Jacobian at each image, by power iteration: a local estimate, NOT a certificate "
            "beyond first order)",
            choices=("provable", "jacobian"),
        ),
        Param("jacobian_iters", int, 20, "power iterations per image for bound: jacobian", low=1),
    )

    def check_metric(self, metric: Metric, where: str) -> None:
        if feature_split_of(metric) is None:
            raise ConfigError(
                f"{where}: fs-iqa needs a metric that exposes its backbone and a Lipschitz bound "
                f"(feature_split); {metric.label!r} does not: use median-smoothing for it, or "
                f"a metric with one (tiny-iqa)"
            )

    def split(self, metric: Metric, images: torch.Tensor) -> FeatureSplit:
        owner = feature_split_of(metric)
        if owner is None:
            raise ConfigError(
                f"fs-iqa: metric {metric.label!r} exposes no feature_split (backbone, head and "
                f"Lipschitz bound); use median-smoothing for it"
            )
        split = owner.feature_split(tuple(images.shape[-2:]))
        if not (split.lipschitz > 0 and split.lipschitz < float("inf")):
            raise ValueError(f"fs-iqa: metric {metric.label!r} gave Lipschitz bound {split.lipschitz!r}")
        return split

    def samples_per_image(self) -> int:
        """Metric forwards per image, what `iqadef plan` counts: the backbone runs once; the n head forwards
        (a small MLP on the features) are not metric forwards (docs/performance.md measures them)."""
        return 1

    def feature_radius(self, split: FeatureSplit) -> float:
        return float(split.lipschitz) * float(self.eps)

    def jacobian_radii(self, split: FeatureSplit, images: torch.Tensor) -> list[float]:
        """``bound: jacobian``: eps times the largest singular value of the backbone's Jacobian at each image
        (secant power iteration, ``core.lipschitz.jacobian_norm``): the paper's relation between the radii."""
        return [
            float(self.eps) * jacobian_norm(split.backbone, images[i : i + 1], iters=int(self.jacobian_iters))
            for i in range(images.shape[0])
        ]

    def smooth(self, metric: Metric, images: torch.Tensor, *, seed: int) -> SmoothedScores:
        split = self.split(metric, images)
        with torch.no_grad():
            features = split.backbone(images).flatten(1)
        self._head = split.head
        try:
            samples = self.noisy_scores(metric, features, seed=seed)
        finally:
            del self._head
        if self.bound == "jacobian":
            parts = [
                median_certificate(samples[i : i + 1], radius, float(self.sigma), float(self.alpha))
                for i, radius in enumerate(self.jacobian_radii(split, images))
            ]
            value, lower, upper = (torch.cat([p[k] for p in parts]) for k in range(3))
        else:
            value, lower, upper = median_certificate(
                samples, self.feature_radius(split), float(self.sigma), float(self.alpha)
            )
        return SmoothedScores(value, lower, upper)

    def base(self, metric: Metric, noisy: torch.Tensor) -> torch.Tensor:
        """The head on noisy *features* (:meth:`noisy_scores` draws them around the backbone's output)."""
        return self._head(noisy)

    def surrogate(self, metric: Metric, images: torch.Tensor, *, seed: int, samples: int) -> torch.Tensor:
        """For EOT attacks: the mean of the head over ``samples`` feature-noise draws (differentiable through
        the backbone)."""
        split = self.split(metric, images)
        features = split.backbone(images).flatten(1)
        draw = self.noise(features.detach(), seed)
        heads = [
            split.head(features + torch.cat([draw(i, 1) for i in range(features.shape[0])])) for _ in range(samples)
        ]
        return torch.stack(heads).mean(dim=0)


@hookimpl
def iqadef_register_certified(register):
    register(FeatureSmoothing)
