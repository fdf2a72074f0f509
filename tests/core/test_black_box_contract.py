"""The black-box contract: an attack with ``black_box = True`` gets a :class:`QueryMetric` (scores only, no
gradient), its cells fail clearly if it asks for a gradient, and each cell records its image's queries."""

from __future__ import annotations

import math
import sys
import types

import pandas as pd
import pytest
import torch

import iqadef
from iqadef import Attack, GradientRequested, Metric, Param, QueryMetric, attack_loss, hookimpl
from iqadef.config.registry import load_run_config
from iqadef.core.adaptive import DefendedMetric
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid


class SharpMetric(Metric):
    """Mean gradient energy of the image: differentiable, cheap."""

    name = "bb-sharp"

    def score(self, images):
        dx = images[..., :, 1:] - images[..., :, :-1]
        return 10 * dx.abs().mean(dim=(1, 2, 3))


class CountingSearch(Attack):
    """Random search with a known query count: one query of every image at the start, one per step, and one
    more of image 0 alone (``which=``), so image 0 costs ``steps + 2`` queries and the others ``steps + 1``."""

    name = "bb-search"
    norm = "linf"
    black_box = True
    params = (Param("eps", float, 8 / 255), Param("steps", int, 5, low=1))

    def run(self, metric, images, *, seed=0):
        assert isinstance(metric, QueryMetric)
        g = self.generator(seed, images.device)
        best, best_loss = images.clone(), attack_loss(metric, images)
        for _ in range(self.steps):
            noise = (torch.rand(images.shape, generator=g) * 2 - 1) * self.eps
            cand = (images + noise).clamp(0, 1)
            loss = attack_loss(metric, cand)
            better = loss < best_loss
            best[better], best_loss = cand[better], torch.minimum(loss, best_loss)
        metric.score(best[:1], which=[0])
        return best


class CheatingSearch(CountingSearch):
    """Claims to be black-box but differentiates the metric."""

    name = "bb-cheat"

    def run(self, metric, images, *, seed=0):
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(metric, x).sum(), x)
        return (images - self.eps * grad.sign()).clamp(0, 1)


class WhiteSign(Attack):
    """One signed-gradient step (a white-box attack: its cells record no queries)."""

    name = "bb-white"
    norm = "linf"
    params = (Param("eps", float, 4 / 255),)

    def run(self, metric, images, *, seed=0):
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(metric, x).sum(), x)
        return (images - self.eps * grad.sign()).clamp(0, 1)


_plugins = types.ModuleType("bb_toy_plugins")
_plugins.iqadef_register_metrics = hookimpl(lambda register: register(SharpMetric))
_plugins.iqadef_register_attacks = hookimpl(
    lambda register: [register(c) for c in (CountingSearch, CheatingSearch, WhiteSign)]
)
sys.modules.setdefault("bb_toy_plugins", _plugins)


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[_plugins])


def test_exported_and_default_white_box():
    assert iqadef.QueryMetric is QueryMetric and iqadef.GradientRequested is GradientRequested
    assert Attack.black_box is False and CountingSearch.black_box is True
    assert CountingSearch.describe()["black_box"] is True


def test_query_metric_scores_without_gradient_and_counts_per_image():
    metric = SharpMetric()
    images = torch.rand(3, 3, 8, 8)
    oracle = QueryMetric(metric, 3)
    assert oracle.range == metric.range and oracle.higher_is_better and oracle.identity() == metric.identity()
    out = oracle.score(images)
    assert torch.allclose(out, metric.score(images))
    assert out.grad_fn is None and not out.requires_grad
    with torch.enable_grad():  # even with autograd on, nothing to differentiate
        assert oracle.score(images).grad_fn is None
    with pytest.raises(GradientRequested, match="gradient"):
        oracle.score(images.clone().requires_grad_(True))
    oracle.score(images[[2, 2]], which=[2, 2])
    assert oracle.queries.tolist() == [2, 2, 4] and oracle.total == 8
    with pytest.raises(ValueError, match="which="):
        oracle.score(images[:2])


def test_query_metric_through_a_defence_queries_f_of_d():
    from iqadef.core.plugins import InstalledPlugins as Registry

    defence = Registry().get("defences", "gaussian-blur")().load("cpu")
    metric = SharpMetric()
    images = torch.rand(2, 3, 16, 16)
    oracle = QueryMetric(DefendedMetric(metric, defence), 2)
    assert torch.allclose(oracle.score(images), metric.score(defence.purify(images)))
    with pytest.raises(GradientRequested):
        oracle.score(images.clone().requires_grad_(True))
    assert oracle.queries.tolist() == [1, 1]


GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 4
seed: 3
examples: 0
metrics: [bb-sharp]
attacks: {attacks}
defences: {defences}
"""


def _run(tmp_path, registry, images, attacks, defences, name="run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(images=images, output=tmp_path / name, attacks=attacks, defences=defences))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    return summary, pd.read_parquet(summary.run_dir / "results.parquet")


def test_black_box_cells_record_exact_queries_and_gradient_calls_fail(tmp_path, image_dir, registry):
    attacks = "[bb-search, {name: bb-search, adaptive: bpda}, bb-cheat, bb-white]"
    summary, df = _run(tmp_path, registry, image_dir, attacks, "[no-defence, jpeg]")
    assert len(df) == 6 * 4 * 2
    search = df[df["attack"] == "bb-search"]
    assert (search["status"] == "ok").all()
    first = {"img0.png", "img4.png"}  # the first image of each batch (two size groups: 4 + 2 images)
    expected = search["image"].map(lambda name: 7.0 if name in first else 6.0)
    assert search["queries"].tolist() == expected.tolist()
    adaptive = df[df["attack"] == "bb-search@bpda"]
    assert (adaptive["status"] == "ok").all()
    assert adaptive["queries"].tolist() == adaptive["image"].map(lambda n: 7.0 if n in first else 6.0).tolist()
    assert adaptive.groupby("image")["adv_path"].nunique().eq(2).all()  # through each defence: its own x_a
    cheat = df[df["attack"] == "bb-cheat"]
    assert (cheat["status"] == "failed").all()
    assert cheat["error"].str.contains("GradientRequested").all()
    assert cheat["error"].str.contains("may only query scores").all()
    white = df[df["attack"] == "bb-white"]
    assert (white["status"] == "ok").all() and white["queries"].isna().all()
    assert summary.failed == len(cheat)

    # a defence added later reuses the cached x_a of the plain attack: its cells still know the queries
    _, again = _run(tmp_path, registry, image_dir, "[bb-search]", "[no-defence, jpeg, median-blur]")
    blur = again[again["defence"] == "median-blur"]
    assert len(blur) == 6 and (blur["status"] == "ok").all()
    assert blur["queries"].tolist() == blur["image"].map(lambda n: 7.0 if n in first else 6.0).tolist()
    assert not any(math.isnan(q) for q in again["queries"])
