"""The three contracts every plugin implements: :class:`Metric`, :class:`Attack`, :class:`Defence`
(plus :class:`ImageScore` for per-image measures).

Each is a small class with a ``name``, a ``version``, typed ``params`` (see :mod:`iqadef.core.params`)
and one method that does the work. Construction is cheap and validates parameters; anything heavy
(weights, models) happens in :meth:`Plugin.load`, once per run and device.

Images are always float RGB tensors ``[B, 3, H, W]`` with values in ``[0, 1]``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from iqadef.core.columns import DeclaresColumns
from iqadef.core.contract import Plugin
from iqadef.core.errors import ConfigError
from iqadef.core.params import ATTACK_ALIASES

__all__ = ["Attack", "Defence", "ImageScore", "Metric", "Plugin", "answer_for", "attack_loss"]


class Metric(Plugin):
    """A no-reference quality metric: ``score(images) -> Tensor[B]``, differentiable w.r.t. the images.

    ``range`` (low, high) is the typical span of scores; attacks divide by ``high - low``.
    ``input_policy`` says in words what the metric does to the input size (resize, patches, ...).
    """

    kind = "metric"
    higher_is_better: ClassVar[bool] = True
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    input_policy: ClassVar[str] = "any size"

    def score(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(images)

    @property
    def span(self) -> float:
        low, high = self.range
        return float(high - low)

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {"higher_is_better": cls.higher_is_better, "range": list(cls.range), "input_policy": cls.input_policy}


def attack_loss(metric: Metric, images: torch.Tensor) -> torch.Tensor:
    """Per-image loss of the reference code, ``1 - f(x)/range`` (``1 + f/range`` when lower is better).

    Minimising it pushes the metric towards "better". Returned per image (``[B]``); attacks sum it so
    that each image's gradient does not depend on the batch it is in.
    """
    sign = 1.0 if metric.higher_is_better else -1.0
    return 1.0 - sign * metric.score(images) / metric.span


class Attack(Plugin):
    """An attack: ``run(metric, images, seed=...) -> adversarial images`` (same shape, in [0, 1]).

    ``norm`` names the bound the attack keeps (``"linf"``, ``"l2"``, ``"rmse"``, or None for
    unbounded/semantic attacks); :meth:`bound` gives its size. A ``black_box`` attack gets the metric as a
    :class:`~iqadef.core.query.QueryMetric` (scores only, no gradient, queries counted per image).
    """

    kind = "attack"
    norm: ClassVar[str | None] = None
    black_box: ClassVar[bool] = False
    param_aliases = ATTACK_ALIASES  # `steps`/`iters`/`iterations`, `alpha`/`step_size` (core/params.py)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def bound(self) -> float | None:
        """The size of the bound in :attr:`norm`, or None."""
        return getattr(self, "eps", None) if self.norm else None

    @staticmethod
    def generator(seed: int, device: torch.device | str) -> torch.Generator:
        """A torch generator on ``device`` seeded with ``seed`` (never the global RNG)."""
        g = torch.Generator(device=torch.device(device))
        g.manual_seed(int(seed) % (2**63))
        return g

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {"norm": cls.norm, "black_box": cls.black_box}


class Defence(Plugin):
    """A purifier: ``purify(images, seed=...) -> images``.

    ``randomized`` defences must draw all their randomness from ``seed`` (the runner passes the same
    seed for the clean and the attacked image of a pair). ``differentiable`` says :meth:`purify` can be
    back-propagated through; for the others, :meth:`forward` uses BPDA: the forward pass is the real
    purification and the backward pass is that of :meth:`estimate_forward` (identity by default; ART's
    ``BasePreprocessor.estimate_forward``, a differentiable approximation of the forward pass).
    """

    kind = "defence"
    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    #: Whether the output has the input's size (crop and resize do not).
    preserves_size: ClassVar[bool] = True
    #: Whether it moves pixels (flip, rotate, crop): a pixel-wise comparison of D(x_a) with x (PSNR, SSIM,
    #: ``quality_score``) then measures the displacement, not damage; the report says so beside such values.
    geometric: ClassVar[bool] = False

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backward_estimate" in cls.__dict__ and "estimate_forward" not in cls.__dict__:
            warnings.warn(
                f"{cls.__name__}: `backward_estimate` is now called `estimate_forward` (it approximates "
                "the forward pass; BPDA differentiates it); the old name keeps working for now",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.estimate_forward = cls.__dict__["backward_estimate"]  # type: ignore[method-assign]

    def estimate_forward(self, images: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of :meth:`purify` whose gradient BPDA uses for non-differentiable
        defences (identity: the straight-through estimator)."""
        return images

    def forward(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """The differentiable path used by adaptive attacks."""
        if self.differentiable:
            return self.purify(images, seed=seed)
        with torch.no_grad():
            real = self.purify(images.detach(), seed=seed)
        if not (torch.is_grad_enabled() and images.requires_grad):  # no gradient wanted (a black-box query):
            return real  # the surrogate's cost buys nothing
        surrogate = self.estimate_forward(images)
        if surrogate.shape != real.shape:
            raise ConfigError(
                f"defence {self.name!r}: its estimate_forward returns shape {tuple(surrogate.shape)} but "
                f"purify returns {tuple(real.shape)}; BPDA needs them equal"
            )
        return surrogate + (real - surrogate).detach()

    @staticmethod
    def generator(seed: int | None, device: torch.device | str) -> torch.Generator:
        g = torch.Generator(device=torch.device(device))
        g.manual_seed(int(seed or 0) % (2**63))
        return g

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {
            "randomized": cls.randomized,
            "differentiable": cls.differentiable,
            "preserves_size": cls.preserves_size,
            "geometric": cls.geometric,
        }


class ImageScore(DeclaresColumns, Plugin):
    """A per-image measure computed for every grid cell (PSNR, SSIM, gain, ...).

    :meth:`compute` receives a :class:`~iqadef.core.cells.CellBatch` and returns named ``[B]`` tensors
    (or floats per image); each name becomes a column of the result table, described by a
    :class:`~iqadef.core.columns.ScoreColumn` in :attr:`columns` (better side, aggregation, main table).
    """

    kind = "score"

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return cls.describe_columns()

    def compute(self, cells: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def answer_for(wrapper: "Metric", metric: "Metric") -> None:
    """A metric that wraps ``metric`` (a defence or a smoothing in front of it, a guard around it) answers
    for it: the attacks read its direction, range and input policy, and put their images on its device."""
    wrapper.higher_is_better = metric.higher_is_better  # type: ignore[misc]
    wrapper.range = metric.range  # type: ignore[misc]
    wrapper.input_policy = metric.input_policy  # type: ignore[misc]
    wrapper.device = metric.device
