"""The ``pyiqa-*`` metric classes: one per pyiqa no-reference metric of the installed pyiqa, built from
:mod:`.catalog` (pyiqa's configs read without importing pyiqa) and named :func:`class_name` in this module,
where the adapter's lazy registrations (:mod:`iqadef_pyiqa`) find them. Importing this module imports torch;
pyiqa itself is imported when a metric is set up.

Each metric computes exactly what pyiqa's ``create_metric(name, as_loss=True)`` computes (pyiqa's own
default options, its architecture module called on the [0, 1] RGB batch with gradients on); the adapter
adds iqadef's contract: direction from pyiqa's ``lower_better``, range from its ``score_range``, weights
through iqadef's rules (:mod:`.files`), and a clear error when a gradient attack targets a metric that has
no gradient.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from iqadef import ConfigError, IqadefError, Metric, WeightsError

from . import catalog
from .files import TORCH_FILES, pyiqa_cache_dir, routed, spec_for
from .names import PYIQA_VERSION, class_name

_KNOWN = Path(__file__).with_name("known_files.json")


@lru_cache(maxsize=1)
def known_files() -> dict:
    """First pyiqa file of each metric, as recorded by :mod:`.scan` (pyiqa version in key 'pyiqa')."""
    return json.loads(_KNOWN.read_text()) if _KNOWN.is_file() else {}


class NotDifferentiable(IqadefError):
    """A gradient attack targeted a pyiqa metric that gives no gradient."""


class PyiqaMetric(Metric):
    """Base of the generated ``pyiqa-*`` classes (one per pyiqa no-reference metric)."""

    pyiqa_name: ClassVar[str] = ""
    arch: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    why_not_differentiable: ClassVar[str] = ""
    range_note: ClassVar[str] = ""

    def setup(self, device: torch.device) -> None:
        import pyiqa

        try:
            with routed():
                model = pyiqa.create_metric(self.pyiqa_name, as_loss=True, device=torch.device("cpu"))
        except IqadefError:
            raise
        except Exception as exc:  # noqa: BLE001  pyiqa raises anything from its backbones' downloads
            first = (str(exc).splitlines() or [""])[0][:300]
            raise WeightsError(
                f"metric {self.name!r}: pyiqa could not build {self.pyiqa_name!r} ({type(exc).__name__}: {first}). "
                f"pyiqa's own files are looked for in $IQADEF_WEIGHTS_DIR and {pyiqa_cache_dir().parent}; "
                f"backbones come from torchvision (<torch hub dir>/checkpoints, {torch.hub.get_dir()}/checkpoints), "
                f"timm / Hugging Face (the HF cache, $HF_HOME) or CLIP ({torch.hub.get_dir()}/clip): put the file "
                f"named above there, or run once with network access (docs/pyiqa.md)") from None
        self.net = model.net

    def score(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects RGB images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        if self._loaded_on is None:
            self.load(images.device)
        wants_grad = torch.is_grad_enabled() and images.requires_grad
        if wants_grad and not self.differentiable:
            raise NotDifferentiable(self._no_gradient())
        out = self.net(images.float())
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.reshape(images.shape[0], -1)
        if out.shape[1] != 1:
            raise ValueError(f"{self.name}: pyiqa returned {out.shape[1]} values per image, expected one")
        out = out[:, 0]
        if wants_grad and not out.requires_grad:
            raise NotDifferentiable(self._no_gradient())
        return out

    def _no_gradient(self) -> str:
        why = self.why_not_differentiable or "its pyiqa implementation gives no gradient"
        return (f"metric {self.name!r} is not differentiable ({why}): gradient attacks cannot target it; "
                f"use it in `metrics:` only with attacks that need no gradient, or pick a differentiable pyiqa "
                f"metric (`iqadef list metrics`, docs/pyiqa.md)")

    @classmethod
    def _describe_extra(cls) -> dict[str, Any]:
        out = super()._describe_extra()
        out.update({"differentiable": cls.differentiable, "pyiqa": cls.pyiqa_name, "range_source": cls.range_note})
        return out


def _weights_of(entry: catalog.Entry) -> tuple:
    found = known_files().get(entry.pyiqa_name) or {}
    if found.get("needs") == "pyiqa":
        return (spec_for(found["url"], description=f"pyiqa checkpoint of {entry.pyiqa_name} (further files, if any, "
                                                   f"are resolved the same way when it loads)"),)
    return ()


def _input_policy(entry: catalog.Entry) -> str:
    size = entry.options.get("test_img_size")
    extra = f"; pyiqa resizes to {size} px" if size else ""
    return f"pyiqa's own preprocessing of the [0, 1] RGB batch (arch {entry.arch}{extra})"


def metric_class(entry: catalog.Entry) -> type[PyiqaMetric]:
    """The iqadef class of one pyiqa metric."""
    direction = "lower is better" if entry.lower_better else "higher is better"
    grad = "differentiable" if entry.differentiable else f"not differentiable: {entry.why_not_differentiable}"
    doc = (f"pyiqa's {entry.pyiqa_name!r} (arch {entry.arch}, options {entry.options}), {direction}, range "
           f"{entry.range[0]:g}..{entry.range[1]:g} ({entry.range_note}); {grad}.")
    attrs = {
        "__doc__": doc, "__module__": __name__,
        "name": entry.name, "version": f"pyiqa-{catalog.pyiqa_version() or 'absent'}",
        "pyiqa_name": entry.pyiqa_name, "arch": entry.arch,
        "higher_is_better": not entry.lower_better, "range": entry.range, "range_note": entry.range_note,
        "differentiable": entry.differentiable, "why_not_differentiable": entry.why_not_differentiable,
        "input_policy": _input_policy(entry), "weights": _weights_of(entry),
    }
    return type(class_name(entry.pyiqa_name), (PyiqaMetric,), attrs)


@lru_cache(maxsize=1)
def metric_classes() -> tuple[type[PyiqaMetric], ...]:
    return tuple(metric_class(e) for e in catalog.entries())


globals().update({cls.__name__: cls for cls in metric_classes()})  # where `module:Class` finds them (pickle too)


def __getattr__(attribute: str):
    """A metric class the installed pyiqa does not offer: one line saying why (the registration lists the
    adapter's names, :data:`iqadef_pyiqa.names.NAMES`)."""
    if not attribute.startswith("Pyiqa_"):
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    version = catalog.pyiqa_version()
    if version is None:
        raise ConfigError("pyiqa is not installed: install the adapter with its dependencies "
                          "(pip install ./plugins/iqadef-pyiqa, docs/pyiqa.md)")
    raise ConfigError(f"the installed pyiqa {version} has no no-reference metric for {attribute!r}; the adapter's "
                      f"list is for pyiqa {PYIQA_VERSION} (docs/pyiqa.md)")


__all__ = ["PyiqaMetric", "NotDifferentiable", "metric_class", "metric_classes", "known_files", "TORCH_FILES",
           "ConfigError"]
