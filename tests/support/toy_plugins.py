"""Small plugins for the core tests (registered through `InstalledPlugins(extra=[this module])`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from iqadef import Attack, Defence, Metric, Param, attack_loss, hookimpl


class ToyMetric(Metric):
    """Mean gradient energy (sharpness) of the image; differentiable, cheap."""

    name = "toy-metric"
    range = (0.0, 1.0)

    def score(self, images):
        dx = images[..., :, 1:] - images[..., :, :-1]
        dy = images[..., 1:, :] - images[..., :-1, :]
        return 10 * (dx.abs().mean(dim=(1, 2, 3)) + dy.abs().mean(dim=(1, 2, 3)))


class ToySign(Attack):
    """A few sign-gradient steps within an L-inf ball."""

    name = "toy-sign"
    norm = "linf"
    params = (Param("eps", float, 4 / 255, low=0, high=1), Param("steps", int, 2, low=1))

    def run(self, metric, images, *, seed=0):
        x = images.clone()
        for _ in range(self.steps):
            x.requires_grad_(True)
            loss = attack_loss(metric, x).sum()
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() - self.eps / self.steps * grad.sign()
            x = (images + (x - images).clamp(-self.eps, self.eps)).clamp(0, 1)
        return x


class ToyRandomShift(Attack):
    """Adds seeded uniform noise (checks that attack seeds are reproducible)."""

    name = "toy-noise"
    norm = "linf"
    params = (Param("eps", float, 4 / 255),)

    def run(self, metric, images, *, seed=0):
        g = self.generator(seed, images.device)
        noise = (torch.rand(images.shape, generator=g, device=images.device) * 2 - 1) * self.eps
        return (images + noise).clamp(0, 1)


class ToyBlur(Defence):
    """3x3 box blur."""

    name = "toy-blur"
    differentiable = True

    def purify(self, images, *, seed=None):
        k = torch.full((3, 1, 3, 3), 1 / 9, device=images.device)
        return torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), k, groups=3)


class ToyRandomNoiseDefence(Defence):
    """Adds seeded Gaussian noise (checks pairs share their randomness)."""

    name = "toy-noise-defence"
    randomized = True
    differentiable = True
    params = (Param("sigma", float, 0.02, low=0, presets=(0.01, 0.02, 0.05)),)

    def purify(self, images, *, seed=None):
        g = self.generator(seed, images.device)
        return (images + self.sigma * torch.randn(images.shape, generator=g, device=images.device)).clamp(0, 1)


class ExplodingDefence(Defence):
    """Raises on every call (fault handling)."""

    name = "toy-explode"

    def purify(self, images, *, seed=None):
        raise RuntimeError("boom")


class WrongShapeDefence(Defence):
    """Returns a tensor of the wrong shape (fault handling)."""

    name = "toy-wrong-shape"

    def purify(self, images, *, seed=None):
        return images[:, :1]


class NaNMetric(ToyMetric):
    """Returns NaN for every image (fault handling)."""

    name = "toy-nan"

    def score(self, images):
        return super().score(images) * float("nan")


@hookimpl
def iqadef_register_metrics(register):
    register(ToyMetric)
    register(NaNMetric)


@hookimpl
def iqadef_register_attacks(register):
    register(ToySign)
    register(ToyRandomShift)


@hookimpl
def iqadef_register_defences(register):
    for cls in (ToyBlur, ToyRandomNoiseDefence, ExplodingDefence, WrongShapeDefence):
        register(cls)


SMALL_GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
metrics: [toy-metric]
attacks: [toy-sign]
defences: [no-defence, toy-blur]
"""


def small_grid_config(tmp_path: Path, images: Path, registry, output: str):
    """A 1 metric x 1 attack x 2 defences grid of the toy plugins over ``images``, run into ``output``."""
    from iqadef.config.registry import load_run_config

    path = tmp_path / f"{output}.yaml"
    path.write_text(SMALL_GRID.format(images=images, output=output))
    return load_run_config(path, plugins=registry)


def install_as_distribution(tmp_path: Path) -> Path:
    """This module as an installed distribution with an `iqadef` entry point, in ``tmp_path/site``.

    Put the returned folder on PYTHONPATH and subprocesses (and Ray workers) find the toy plugins the
    way they find any third-party plugin.
    """
    site = tmp_path / "site"
    info = site / "iqadef_toy_plugins-0.1.dist-info"
    info.mkdir(parents=True)
    shutil.copy(Path(__file__), site / "toy_plugins.py")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: iqadef-toy-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[iqadef]\ntoy = toy_plugins\n")
    return site
