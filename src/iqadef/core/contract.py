"""The part of the plugin contract that needs no torch: :class:`Plugin`'s identity, parameters, label and
description. Summary scores (the report's statistics) and ``iqadef list`` use it without importing torch;
:mod:`.base` adds the tensor contracts (Metric, Attack, Defence, ImageScore) on top of it.

torch is imported where a plugin first needs a device or loads its networks (:meth:`Plugin.load`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from iqadef.core.params import Param, annotation_problem, pixel_fraction, resolve

if TYPE_CHECKING:
    import torch


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
    #: How the run-level ``precision`` reaches :meth:`precision_modules` (core/numerics.py): ``"cast"`` the
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
        self._loaded_on: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where the plugin computes: the CPU until :meth:`load` (or the metric it answers for) moves it."""
        device = self.__dict__.get("_device")
        if device is None:
            import torch

            device = self.__dict__["_device"] = torch.device("cpu")
        return device

    @device.setter
    def device(self, value: torch.device) -> None:
        self.__dict__["_device"] = value

    # -- identity --------------------------------------------------------------------------
    #: Parameters the label shows even at their default (a registry's sweep: ``jpeg[quality=50]`` beside
    #: ``jpeg[quality=10]``). Labels are for reading only: cache keys come from :meth:`identity`.
    label_params: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """Short readable id: the name plus the parameters that differ from their defaults (and those of
        :attr:`label_params`)."""
        changed = {
            p.name: self.config[p.name]
            for p in self.params
            if self.config[p.name] != p.default or p.name in self.label_params
        }
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
            from iqadef.core.weights import fingerprint

            ident["weights"] = [
                fingerprint(s, None if isinstance(s, Path) else self.config.get(s.param)) for s in sources
            ]
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
        import torch

        device = torch.device(device)
        if self._loaded_on != device:
            self.device = device
            self.setup(device)
            for module in self._modules():
                module.eval().requires_grad_(False).to(device)
            self._loaded_on = device
            if self.numerics is not None:  # the run's precision/compile/channels_last (core/numerics.py)
                from iqadef.core.numerics import apply_precision

                apply_precision(self)
        return self

    def setup(self, device: torch.device) -> None:
        """Build models and load weights. Nothing to do for plugins without weights."""

    def precision_modules(self) -> list[torch.nn.Module]:
        """The loaded torch networks that the run-level ``precision``, ``compile`` and ``channels_last`` apply
        to (core/numerics.py). Each must be called as ``module(...)`` with float32 tensors, its float outputs
        are handed back as float32. Default: none, the keys do not apply (attacks, classic defences)."""
        return []

    #: the mark ``core.precision.takes_numerics`` reads: this default declares no networks
    precision_modules.declares_no_networks = True  # type: ignore[attr-defined]

    def _modules(self) -> list[torch.nn.Module]:
        import torch

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
                {
                    "name": p.name,
                    "type": p.type_name,
                    "default": _jsonable(p.default),
                    "allowed": p.allowed(),
                    "help": p.help,
                    "presets": [_jsonable(v) for v in p.presets],
                }
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
