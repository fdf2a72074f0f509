"""Careless plugins for the worker's trust tests: they write into their inputs, break the output contract,
call sys.exit or hang (registered through `InstalledPlugins(extra=[this module])`)."""

from __future__ import annotations

import threading
import time

import torch
from toy_plugins import ToyMetric

from iqadef import Defence, ImageScore, Param, hookimpl

#: Set by a test to release every hanging plugin (so no thread outlives the test for long).
RELEASE = threading.Event()


def _write(images: torch.Tensor, how: str) -> None:
    """Scale ``images`` by 0.5 in place, the way careless plugin code does it."""
    if how == "mul_":
        images.mul_(0.5)  # bumps the version counter
    elif how == "data":
        images.data.mul_(0.5)  # `.data` does not bump it
    elif how == "numpy":
        array = images.detach().cpu().numpy()  # shares memory on CPU, no version bump either
        array *= 0.5
    else:
        raise ValueError(how)


class InPlaceDefence(Defence):
    """`images.<write>; return images`: the bug of issue 13, item 2."""

    name = "toy-inplace"
    params = (Param("how", str, "mul_", choices=("mul_", "data", "numpy")),)

    def purify(self, images, *, seed=None):
        _write(images, self.how)
        return images


class GradInPlaceDefence(Defence):
    """Writes into its input only when gradients are on, i.e. inside an adaptive attack."""

    name = "toy-grad-inplace"
    differentiable = True

    def purify(self, images, *, seed=None):
        if torch.is_grad_enabled():
            images.detach().mul_(0.5)
        return images * 1.0


class NormalisingMetric(ToyMetric):
    """Normalises its input in place before scoring (a common metric bug)."""

    name = "toy-normalise-inplace"
    params = (Param("how", str, "mul_", choices=("mul_", "data", "numpy")),)

    def score(self, images):
        _write(images, self.how)
        return super().score(images)


class GradInPlaceMetric(ToyMetric):
    """Writes into its input only when gradients are on, i.e. inside an attack."""

    name = "toy-grad-inplace-metric"

    def score(self, images):
        if torch.is_grad_enabled():
            images.detach().mul_(0.5)
        return super().score(images)


class PixelMetric(ToyMetric):
    """Returns a score per pixel, ``[B, H, W]``, instead of one per image."""

    name = "toy-per-pixel"

    def score(self, images):
        return images.mean(dim=1)


class ColumnMetric(ToyMetric):
    """Returns ``[B, 1]`` (allowed)."""

    name = "toy-column"

    def score(self, images):
        return super().score(images).unsqueeze(1)


class ExitingDefence(Defence):
    """Calls ``sys.exit(3)`` in purify."""

    name = "toy-exit"
    params = (Param("code", int, 3),)

    def purify(self, images, *, seed=None):
        raise SystemExit(self.code)


class ExitingMetric(ToyMetric):
    """Calls ``sys.exit(3)`` in score."""

    name = "toy-exit-metric"

    def score(self, images):
        raise SystemExit(3)


class HangingDefence(Defence):
    """Hangs (until ``RELEASE`` or 60 s) on batches of images ``height`` pixels high: waiting, or ``busy``
    computing with torch (a thread busy in torch when Python exits aborts the process)."""

    name = "toy-hang"
    params = (Param("height", int, 16), Param("busy", bool, False))

    def purify(self, images, *, seed=None):
        if images.shape[-2] == self.height:
            if not self.busy:
                RELEASE.wait(60)
            end = time.monotonic() + 60
            while self.busy and not RELEASE.is_set() and time.monotonic() < end:
                torch.nn.functional.avg_pool2d(images, 3, 1, 1)
        return images.clone()


class InPlaceScore(ImageScore):
    """Doubles f(x) in place (``cells.f_clean *= 2``)."""

    name = "toy-score-inplace"

    def compute(self, cells):
        cells.f_clean.mul_(2)
        return {"toy_inplace": cells.f_clean}


class DataWriteScore(ImageScore):
    """Writes into x through ``.data`` (no version bump)."""

    name = "toy-score-data"

    def compute(self, cells):
        cells.clean.data.mul_(0.5)
        return {"toy_data": torch.zeros(len(cells))}


class MemoWriteScore(ImageScore):
    """Changes a shared pair measure in place after getting it."""

    name = "toy-score-memo"

    def compute(self, cells):
        value = cells.pair_measure("toy-mse", cells.clean, cells.adv, lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3)))
        value *= 2
        return {"toy_mse2": value}


class WideScore(ImageScore):
    """Returns two numbers per image."""

    name = "toy-score-wide"

    def compute(self, cells):
        return {"toy_wide": torch.zeros(len(cells), 2)}


class ListScore(ImageScore):
    """Returns a plain list of floats, one per image (allowed)."""

    name = "toy-score-list"

    def compute(self, cells):
        return {"toy_list": [float(i) for i in range(len(cells))]}


class ReservedScore(ImageScore):
    """Returns a column named like one of the table's own."""

    name = "toy-score-reserved"

    def compute(self, cells):
        return {"status": torch.zeros(len(cells))}


class ExitingScore(ImageScore):
    """Calls ``sys.exit(3)``."""

    name = "toy-score-exit"

    def compute(self, cells):
        raise SystemExit(3)


#: Score classes by name, for tests that add one of them to the built-in scores.
SCORES = {
    cls.name: cls
    for cls in (InPlaceScore, DataWriteScore, MemoWriteScore, WideScore, ListScore, ReservedScore, ExitingScore)
}


@hookimpl
def iqadef_register_metrics(register):
    for cls in (NormalisingMetric, GradInPlaceMetric, PixelMetric, ColumnMetric, ExitingMetric):
        register(cls)


@hookimpl
def iqadef_register_defences(register):
    for cls in (InPlaceDefence, GradInPlaceDefence, ExitingDefence, HangingDefence):
        register(cls)
