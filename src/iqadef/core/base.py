"""The three contracts every plugin implements: :class:`Metric`, :class:`Attack`, :class:`Defence`
(plus :class:`ImageScore` for per-image measures).

Each is a small class with a ``name``, a ``version``, typed ``params`` (see :mod:`iqadef.core.params`)
and one method that does the work. Construction is cheap and validates parameters; anything heavy
(weights, models) happens in :meth:`Plugin.load`, once per run and device.

Images are always float RGB tensors ``[B, 3, H, W]`` with values in ``[0, 1]``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch

from .columns import DeclaresColumns
from .errors import ConfigError
from .params import ATTACK_ALIASES, Param, annotation_problem, pixel_fraction, resolve
from .precision import apply_precision, declares_no_networks
from .weights import fingerprint


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value


class Plugin:
    """Common part of every plugin: identity, parameters, lifecycle."""

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    params: ClassVar[tuple[Param, ...]] = ()
    #: Groups of parameter names that stand for the one this plugin declares (attacks: ``ATTACK_ALIASES``).
    param_aliases: ClassVar[tuple[frozenset[str], ...]] = ()
    #: Weight files this plugin needs (``iqadef.core.weights.WeightSpec``), listed by ``iqadef weights``.
    weights: ClassVar[tuple] = ()
    #: How the run-level ``precision`` reaches :meth:`precision_modules` (core/precision.py): ``"cast"`` the
    #: networks' weights and inputs, or ``"autocast"`` for networks that manage their dtypes themselves.
    precision_style: ClassVar[str] = "cast"
    #: The run's ``precision``/``compile``/``channels_last`` (``core.precision.Numerics``), set by the registry
    #: on plugins that override :meth:`precision_modules`; None: fp32 as written.
    numerics: Any = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for p in cls.params:
            if hasattr(Plugin, p.name) or p.name in {"config", "device", "label"}:
                raise TypeError(f"{cls.__name__}: parameter name {p.name!r} clashes with a Plugin attribute")
            annotation = param_annotation(cls, p.name)
            problem = None if annotation is None else annotation_problem(p, annotation)
            if problem:
                raise TypeError(f"{cls.__module__}.{cls.__qualname__}: {problem}")

    def __init__(self, where: str | None = None, **values: Any):
        where = where or self.name or type(self).__name__
        self.config: dict[str, Any] = resolve(self.params, values, where, self.param_aliases)
        for key, value in self.config.items():
            setattr(self, key, value)
        self.device = torch.device("cpu")
        self._loaded_on: torch.device | None = None

    # -- identity --------------------------------------------------------------------------
    #: Parameters the label shows even at their default (a registry's sweep: ``jpeg[quality=50]`` beside
    #: ``jpeg[quality=10]``). Labels are for reading only: cache keys come from :meth:`identity`.
    label_params: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """Short readable id: the name plus the parameters that differ from their defaults (and those of
        :attr:`label_params`)."""
        changed = {p.name: self.config[p.name] for p in self.params
                   if self.config[p.name] != p.default or p.name in self.label_params}
        if not changed:
            return self.name
        inner = ",".join(f"{k}={_fmt(v)}" for k, v in changed.items())
        return f"{self.name}[{inner}]"

    def identity(self) -> dict[str, Any]:
        """Everything that determines this plugin's output (used in cache keys), weights' content included:
        retrained or replaced weights must not reuse results computed with the old ones."""
        ident = {"kind": self.kind, "name": self.name, "version": self.version, "params": _canonical(self.config)}
        sources = self.weights_in_use()
        if sources:
            ident["weights"] = [fingerprint(s, None if isinstance(s, Path) else self.config.get(s.param))
                                for s in sources]
        if self.numerics is not None and not self.numerics.is_default:
            ident["numerics"] = self.numerics.identity()  # bf16/fp16 scores differ: no fp32 result is reused
        return ident

    def weights_in_use(self) -> tuple:
        """The weight files this configuration loads: ``WeightSpec``s (an explicit path comes from the
        spec's ``param``) or paths of packaged files. Default: every spec in :attr:`weights`; override when
        parameters decide which files are needed. Their content is part of :meth:`identity`."""
        return tuple(self.weights)

    def key(self) -> str:
        """A stable hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- lifecycle -------------------------------------------------------------------------
    def load(self, device: torch.device | str = "cpu") -> "Plugin":
        """Load weights/models onto ``device`` (idempotent). Subclasses override :meth:`setup`."""
        device = torch.device(device)
        if self._loaded_on != device:
            self.device = device
            self.setup(device)
            for module in self._modules():
                module.eval().requires_grad_(False).to(device)
            self._loaded_on = device
            if self.numerics is not None:  # the run's precision/compile/channels_last (core/precision.py)
                apply_precision(self)
        return self

    def setup(self, device: torch.device) -> None:
        """Build models and load weights. Nothing to do for plugins without weights."""

    @declares_no_networks
    def precision_modules(self) -> list[torch.nn.Module]:
        """The loaded torch networks that the run-level ``precision``, ``compile`` and ``channels_last`` apply
        to (core/precision.py). Each must be called as ``module(...)`` with float32 tensors, its float outputs
        are handed back as float32. Default: none, the keys do not apply (attacks, classic defences)."""
        return []

    def _modules(self) -> list[torch.nn.Module]:
        return [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]

    # -- description -------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict[str, Any]:
        """A JSON-able description for ``iqadef list`` and the docs."""
        doc = (cls.__doc__ or "").strip()
        out = {
            "name": cls.name,
            "kind": cls.kind,
            "version": cls.version,
            "doc": doc,
            "params": [
                {"name": p.name, "type": p.type_name, "default": _jsonable(p.default), "allowed": p.allowed(),
                 "help": p.help, "presets": [_jsonable(v) for v in p.presets]}
                for p in cls.params
            ],
        }
        if cls.weights:
            out["weights"] = [w.describe() for w in cls.weights]
        out.update(cls._describe_extra())
        return out

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def param_annotation(cls: type, name: str) -> Any:
    """The class annotation of parameter ``name`` (``eps: float`` in the plugin's body or a base's), or None.

    The annotation is what a type checker knows of ``self.eps`` (the value :meth:`Plugin.__init__` sets);
    where present it must agree with the Param (checked when the class is defined)."""
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if name in annotations:
            return annotations[name]
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        short = f"{v:.6g}"
        return short if float(short) == v else (pixel_fraction(v) or short)  # eps=4/255, not 0.0156863
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(x) for x in v)
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


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
        return {"higher_is_better": cls.higher_is_better, "range": list(cls.range),
                "input_policy": cls.input_policy}


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
            warnings.warn(f"{cls.__name__}: `backward_estimate` is now called `estimate_forward` (it approximates "
                          "the forward pass; BPDA differentiates it); the old name keeps working for now",
                          DeprecationWarning, stacklevel=2)
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
            return real                                             # the surrogate's cost buys nothing
        surrogate = self.estimate_forward(images)
        if surrogate.shape != real.shape:
            raise ConfigError(
                f"defence {self.name!r}: its estimate_forward returns shape {tuple(surrogate.shape)} but "
                f"purify returns {tuple(real.shape)}; BPDA needs them equal")
        return surrogate + (real - surrogate).detach()

    @staticmethod
    def generator(seed: int | None, device: torch.device | str) -> torch.Generator:
        g = torch.Generator(device=torch.device(device))
        g.manual_seed(int(seed or 0) % (2**63))
        return g

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        return {"randomized": cls.randomized, "differentiable": cls.differentiable,
                "preserves_size": cls.preserves_size, "geometric": cls.geometric}


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

