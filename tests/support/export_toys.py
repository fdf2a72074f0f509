"""Plugins the export tests need beyond tests/support/toy_plugins.py: a metric whose scores come from a checkpoint
file (replaced under the same path between runs) and a defence whose labels differ only in characters that
are not folder-safe."""

from __future__ import annotations

from pathlib import Path

from toy_plugins import ToyMetric

from iqadef import Defence, Param, hookimpl


class CheckpointMetric(ToyMetric):
    """The toy metric times a factor read from a checkpoint file (part of its cache key, like real weights)."""

    name = "toy-ckpt"
    params = (Param("weights_path", str, None, "a text file holding the factor"),)

    def weights_in_use(self) -> tuple:
        return (Path(self.weights_path),)

    def setup(self, device) -> None:
        self.factor = float(Path(self.weights_path).read_text())

    def score(self, images):
        return super().score(images) * self.factor


class TaggedDefence(Defence):
    """Does nothing; its ``tag`` only makes its label (``toy-tag[tag=...]``)."""

    name = "toy-tag"
    params = (Param("tag", str, "plain", "any text"),)

    def purify(self, images, *, seed=None):
        return images.clone()


@hookimpl
def iqadef_register_metrics(register):
    register(CheckpointMetric)


@hookimpl
def iqadef_register_defences(register):
    register(TaggedDefence)
