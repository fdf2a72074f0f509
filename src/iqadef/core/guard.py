"""Plugins cannot change the runner's tensors unseen: what the grid worker checks around every plugin call.

The runner shares tensors between plugins to avoid recomputing them: the clean batch x goes to the
metric and to every defence, x_a to every defence, and a cell's four images and four scores to every
per-image score. A plugin that writes into its input (``images.mul_(0); return images`` in ``purify``,
a metric that normalises ``images.sub_(mean)``, a score that does ``cells.f_clean *= 2``) would
silently change the cells of every plugin after it. So every tensor handed to a plugin is *sealed*
(:class:`Seal`) and checked after the call:

* its **version counter** (``Tensor._version``): torch bumps it on every in-place operation on the
  tensor, through any view or ``detach()`` alias, under ``torch.no_grad()`` and ``inference_mode``
  too. Free, so it is checked after every call, including the metric's calls inside an attack
  (:class:`GuardedMetric`) and the defence's and metric's calls inside an adaptive attack;
* a **fingerprint** of its content (:func:`fingerprint`), for writes that bypass the counter:
  ``images.data.mul_(0)``, ``images.numpy()[...] = 0`` and raw storage writes do not bump it. It costs one
  pass over the tensor, so the runner takes it where plugins hand tensors on (see
  :class:`~iqadef.execute.worker.Worker`), and benchmarks/run_all.py (section ``guard``) measures its cost.

A broken seal fails the cells of that call with a message naming the plugin and saying it modified its
input in place; the runner then rebuilds the tensors from their sources (files, PNG bytes, the
plugins' outputs again), so the cells after the offender are right.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from iqadef.core.base import Metric

#: Tensors up to this many elements are fingerprinted by an exact copy (scores, small images).
EXACT_UP_TO = 4096
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class CellFailure(Exception):
    """A plugin misbehaved in one cell; recorded as a failed cell, the grid goes on."""


class InputModified(CellFailure):
    """A plugin wrote into a tensor the runner handed it."""


def modified_message(who: str, what: str) -> str:
    return (
        f"{who} modified its input ({what}) in place; plugins must return new tensors and leave their "
        f"inputs as they are (use e.g. `images = images.clone()` or out-of-place operations)"
    )


def fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """A cheap summary of ``tensor``'s bits that changes when its content changes.

    Small tensors: an exact copy of the bits. Larger ones: per row (last dimension) the wrapping integer sum of the
    elements' bit patterns and of the row's first half. Any change of a value changes its row's sum;
    moving rows, channels or images, and flipping rows left to right, change the order of the sums.
    Integer sums do not depend on the order of summation, so the fingerprint is exact and repeatable.
    """
    t = tensor.detach().reshape(1) if tensor.dim() == 0 else tensor.detach()
    bits = t.view(_BITS[t.element_size()]) if t.element_size() in _BITS else t
    if t.numel() <= EXACT_UP_TO:
        return bits.clone()  # bit patterns: a NaN equals itself
    rows = bits.reshape(-1, bits.shape[-1])
    half = max(1, rows.shape[1] // 2)
    return torch.cat([rows.sum(1, dtype=torch.int32), rows[:, :half].sum(1, dtype=torch.int32)])


class Seal:
    """A tensor as it was when sealed: its version counter and (``deep``) its fingerprint."""

    __slots__ = ("tensor", "name", "version", "print")

    def __init__(self, tensor: torch.Tensor, name: str, deep: bool = True):
        self.tensor = tensor
        self.name = name
        self.version = tensor._version
        self.print = fingerprint(tensor) if deep else None

    def intact(self, deep: bool = True) -> bool:
        """True if the tensor is unchanged; ``deep=False`` checks the version counter only (free), except for
        small tensors (scores), whose exact copy is always compared (as cheap)."""
        if self.tensor._version != self.version:
            return False
        if self.print is None or (not deep and self.tensor.numel() > EXACT_UP_TO):
            return True
        now = fingerprint(self.tensor)
        return now.shape == self.print.shape and bool(torch.equal(now, self.print))


def broken(seals: list[Seal], deep: bool = True) -> Seal | None:
    """The first seal whose tensor changed, or None."""
    return next((s for s in seals if not s.intact(deep)), None)


class Tripwire:
    """Remembers the first in-place write seen inside an attack, even if the attack swallows the error."""

    def __init__(self) -> None:
        self.message: str | None = None

    def trip(self, message: str) -> None:
        if self.message is None:
            self.message = message
        raise InputModified(message)


def checked_call(who: str, what: str, tensor: torch.Tensor, call: Callable[[], Any], tripwire: Tripwire | None) -> Any:
    """``call()``, then fail if it bumped ``tensor``'s version counter (used inside attacks: free)."""
    before = tensor._version
    out = call()
    if tensor._version != before:
        message = modified_message(who, what)
        if tripwire is None:
            raise InputModified(message)
        tripwire.trip(message)
    return out


class GuardedMetric(Metric):
    """The metric as an attack sees it: the same scores, but writing into the attack's images is an error.

    Everything else (``range``, ``device``, ``identity()``, ``key()``, attributes such as ``net``) is the
    wrapped metric's, so attacks that cache per metric or read its range behave as before.
    """

    name = "guarded-metric"

    def __init__(self, metric: Metric, tripwire: Tripwire | None = None):
        self.__dict__["_metric"] = metric
        self.__dict__["_tripwire"] = tripwire
        for attr in ("name", "kind", "version", "params", "weights", "higher_is_better", "range", "input_policy"):
            self.__dict__[attr] = getattr(metric, attr)  # instance values shadow Metric's class defaults

    def __getattr__(self, attr: str) -> Any:  # only called for what this wrapper does not define
        return getattr(self.__dict__["_metric"], attr)

    @property
    def label(self) -> str:
        return self._metric.label

    @property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        return self._metric.config

    @property  # type: ignore[misc]  # read-only here: the guarded metric's device (Plugin's is settable)
    def device(self) -> torch.device:
        return self._metric.device

    def identity(self) -> dict[str, Any]:
        return self._metric.identity()

    def key(self) -> str:
        return self._metric.key()

    def load(self, device: torch.device | str = "cpu") -> "GuardedMetric":
        self._metric.load(device)
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return checked_call(
            f"metric {self._metric.label!r}",
            "the attack's images",
            images,
            lambda: self._metric.score(images),
            self._tripwire,
        )


def unwrap(metric: Metric) -> Metric:
    """The metric inside a :class:`GuardedMetric` (itself otherwise)."""
    return metric.__dict__.get("_metric", metric) if isinstance(metric, GuardedMetric) else metric


__all__ = [
    "CellFailure",
    "InputModified",
    "Seal",
    "GuardedMetric",
    "Tripwire",
    "broken",
    "checked_call",
    "fingerprint",
    "modified_message",
]


def check_images(out: Any, like: torch.Tensor | None, who: str, same_size: bool = True) -> torch.Tensor:
    """An attack's or a defence's output: ``[B,3,H,W]`` float pixels in [0, 1] on the input's device."""
    expected = f"[B,3,H,W] with B={like.shape[0]}" if like is not None else "[B,3,H,W]"
    if not isinstance(out, torch.Tensor):
        raise CellFailure(f"{who} returned {type(out).__name__}, expected a tensor {expected}")
    if out.dim() != 4 or out.shape[1] != 3 or (like is not None and out.shape[0] != like.shape[0]):
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected {expected}")
    if same_size and like is not None and out.shape != like.shape:
        raise CellFailure(f"{who} returned shape {tuple(out.shape)}, expected {tuple(like.shape)}")
    if not out.is_floating_point():
        raise CellFailure(f"{who} returned {out.dtype} pixels, expected floats in [0, 1]")
    if like is not None and out.device != like.device:
        raise CellFailure(f"{who} returned a tensor on {out.device}, expected {like.device} (its input's device)")
    if not torch.isfinite(out).all():
        raise CellFailure(f"{who} returned NaN or inf pixels")
    low, high = float(out.min()), float(out.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise CellFailure(f"{who} returned values in [{low:.4g}, {high:.4g}], outside [0, 1]")
    return out.clamp(0, 1)
