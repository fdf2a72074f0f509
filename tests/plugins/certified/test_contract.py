"""A certified defence from a plugin module: registered through iqadef_register_certified, its output checked
against the contract; a broken one fails its own cells only, named."""

from __future__ import annotations

import sys

import pandas as pd
import torch
import toy_plugins

from iqadef import MetricSmoothing, SmoothedScores, hookimpl
from iqadef.config.registry import load_run_config
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid


class RawMean(MetricSmoothing):
    """Mean of the raw noisy scores, certifies nothing (a third-party smoothing)."""

    name = "raw-mean"
    certifies = False

    def aggregate(self, samples, metric):
        return samples.mean(dim=1), None, None


class Explodes(MetricSmoothing):
    """Raises."""

    name = "explodes"

    def smooth(self, metric, images, *, seed):
        raise RuntimeError("boom")


class WrongShape(MetricSmoothing):
    """One value too many."""

    name = "wrong-shape"

    def smooth(self, metric, images, *, seed):
        v = torch.zeros(images.shape[0] + 1)
        return SmoothedScores(v, v, v)


class Inverted(MetricSmoothing):
    """An interval that does not contain its value."""

    name = "inverted"

    def smooth(self, metric, images, *, seed):
        v = metric.score(images)
        return SmoothedScores(v, v + 1, v + 2)


class WritesInput(MetricSmoothing):
    """Writes into the images it is given."""

    name = "writes-input"
    certifies = False

    def smooth(self, metric, images, *, seed):
        images.mul_(0.5)
        return SmoothedScores(metric.score(images))


@hookimpl
def iqadef_register_certified(register):
    for cls in (RawMean, Explodes, WrongShape, Inverted, WritesInput):
        register(cls)


def test_broken_certified_defences_fail_their_cells_only(tmp_path, image_dir):
    registry = InstalledPlugins(extra=[toy_plugins, sys.modules[__name__]], entry_points=False)
    assert "raw-mean" in registry.names("certified")
    path = tmp_path / "r.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: out\nbatch_size: 3\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ncertified: [{{name: raw-mean, n: 4}}, {{name: explodes, n: 4}}, "
        f"{{name: wrong-shape, n: 4}}, {{name: inverted, n: 4}}, {{name: writes-input, n: 4}}]\n"
    )
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    by = {d: g for d, g in df.groupby(df["defence"].str.split("[").str[0])}
    assert (by["no-defence"]["status"] == "ok").all() and (by["raw-mean"]["status"] == "ok").all()
    assert "cert_lower_clean" not in df.columns  # nothing certified in this grid: no interval columns
    assert (by["raw-mean"]["cert_radius"] == 0.25).all() and by["raw-mean"]["adv_l2"].notna().all()
    errors = {d: set(g["error"]) for d, g in by.items() if d not in ("no-defence", "raw-mean")}
    assert all((by[d]["status"] == "failed").all() for d in errors)
    assert "certified defence 'explodes[n=4]' raised RuntimeError: boom" in errors["explodes"].pop()
    assert {e.split(": one value")[0].split("returned ")[1] for e in errors["wrong-shape"]} == {
        "value of shape [4], expected [3]",
        "value of shape [2], expected [1]",
        "value of shape [3], expected [2]",
    }
    assert "does not contain its smoothed value" in next(iter(errors["inverted"]))
    assert "writes-input" in next(iter(errors["writes-input"])) and "clean images" in next(iter(errors["writes-input"]))
