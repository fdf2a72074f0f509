"""The content of a plugin's weight files is part of its identity: replaced or retrained weights reuse no
cached adversarial image or finished cell, and a missing file stops a run before any work."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest
import torch
import toy_plugins

from iqadef import Metric, Param, WeightsError, hookimpl
from iqadef.config.registry import load_run_config
from iqadef.core import weights as W
from iqadef.core.plugins import InstalledPlugins
from iqadef.core.weights import WeightSpec, fingerprint, load_weights, sha256_of
from iqadef.execute import run_grid

SPEC = WeightSpec(filename="gain.pth", urls=("https://example.invalid/gain.pth",), description="test weights")


class WeightedMetric(Metric):
    """Mean brightness times a gain read from a weight file (so different weights give different scores)."""

    name = "toy-weighted"
    range = (0.0, 10.0)
    params = (Param("weights_path", Path, None, help="explicit gain.pth"),)
    weights = (SPEC,)

    def setup(self, device):
        self.gain = load_weights(SPEC, self.weights_path)["gain"].to(device)

    def score(self, images):
        if self._loaded_on is None:
            self.load(images.device)
        return images.mean(dim=(1, 2, 3)) * self.gain


def save_gain(path: Path, gain: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(OrderedDict(gain=torch.tensor(gain)), path)
    return path


class WeightedPlugins:
    """A plugin namespace that registers :class:`WeightedMetric`."""

    @staticmethod
    @hookimpl
    def iqadef_register_metrics(register):
        register(WeightedMetric)


@pytest.fixture()
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, WeightedPlugins], entry_points=False)


def test_key_follows_the_content_of_an_explicit_file(home):
    path = save_gain(home / "w" / "gain.pth", 2.0)
    before = WeightedMetric(weights_path=path).key()
    assert WeightedMetric(weights_path=path).key() == before  # stable
    save_gain(path, 3.0)
    assert WeightedMetric(weights_path=path).key() != before
    save_gain(path, 2.0)
    assert WeightedMetric(weights_path=path).key() == before  # content, not modification time


def test_key_follows_the_file_found_in_the_offline_folder_or_the_pin(home, monkeypatch):
    folder = home / "offline"
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(folder))
    assert fingerprint(SPEC) == "unresolved:gain.pth"
    path = save_gain(folder / "gain.pth", 2.0)
    assert fingerprint(SPEC) == sha256_of(path)
    assert WeightedMetric().identity()["weights"] == [sha256_of(path)]
    pinned = WeightSpec(filename="gain.pth", urls=(), sha256="AB" * 32)
    assert fingerprint(pinned) == "ab" * 32  # verified against the pin on load, so no need to hash
    assert fingerprint(Path(home / "nowhere.pt")).startswith("missing:")


def test_large_files_are_hashed_once_per_process(home, monkeypatch):
    path = save_gain(home / "gain.pth", 2.0)
    calls = []
    real = W.sha256_of
    monkeypatch.setattr(W, "sha256_of", lambda p: calls.append(p) or real(p))
    WeightedMetric(weights_path=path).key()
    WeightedMetric(weights_path=path).key()
    assert len(calls) == 2  # just written: a second write in the same clock tick could keep size and mtime
    old = time.time() - 60
    os.utime(path, (old, old))
    for _ in range(5):
        WeightedMetric(weights_path=path).key()
    assert len(calls) == 3


GRID = """
dataset: {{images: {images}}}
output: run
batch_size: 3
seed: 4
examples: 0
metrics: [{{name: toy-weighted, weights_path: {weights}}}]
attacks: [toy-sign]
defences: [no-defence, toy-blur]
"""


def run(tmp_path: Path, images: Path, weights: Path, registry: InstalledPlugins):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(images=images, weights=weights))
    return run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)


def test_replaced_weights_recompute_every_cell_and_the_table_shows_only_them(home, image_dir, registry):
    weights = save_gain(home / "gain.pth", 2.0)
    first = run(home, image_dir, weights, registry)
    assert first.computed == first.total == 6 * 2
    again = run(home, image_dir, weights, registry)
    assert again.computed == 0 and again.skipped == again.total

    save_gain(weights, 3.0)  # same path, same registry: only the file changed
    replaced = run(home, image_dir, weights, registry)
    assert replaced.computed == replaced.total and replaced.skipped == 0
    table = pd.read_parquet(replaced.run_dir / "results.parquet")
    assert len(table) == replaced.total and not table.duplicated(["metric", "attack", "defence", "image"]).any()
    # the earlier cells are kept in the store, not exported
    assert replaced.other_cells == first.total
    with sqlite3.connect(replaced.run_dir / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 2 * first.total
    adv_files = list((replaced.run_dir / "cache" / "adv").rglob("*.png"))
    assert len(adv_files) == 2 * 6  # the adversarial images were computed again, not reused

    save_gain(weights, 2.0)  # back to the first weights: everything is found again
    back = run(home, image_dir, weights, registry)
    assert back.computed == 0 and back.other_cells == first.total


def test_clean_scores_follow_the_new_weights(home, image_dir, registry):
    weights = save_gain(home / "gain.pth", 2.0)
    first = pd.read_parquet(run(home, image_dir, weights, registry).run_dir / "results.parquet")
    save_gain(weights, 3.0)
    second = pd.read_parquet(run(home, image_dir, weights, registry).run_dir / "results.parquet")
    ratio = second["f_clean"].to_numpy() / first["f_clean"].to_numpy()
    assert ratio == pytest.approx(1.5, rel=1e-5)


def test_missing_weights_stop_the_run_before_any_work(home, image_dir, registry, monkeypatch):
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    path = home / "grid.yaml"
    path.write_text(
        GRID.replace("{{name: toy-weighted, weights_path: {weights}}}", "toy-weighted").format(images=image_dir)
    )
    calls = []
    monkeypatch.setattr(WeightedMetric, "score", lambda self, x: calls.append(x) or x.mean(dim=(1, 2, 3)))
    with pytest.raises(WeightsError, match=r"gain\.pth.*not found.*IQADEF_WEIGHTS_DIR"):
        run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    assert calls == []
    with sqlite3.connect(home / "run" / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0


def test_builtins_fingerprint_the_files_they_load(home, tmp_path):
    import json

    from iqadef.plugins.defences.diffpure import GUIDED_256_WEIGHTS, DiffPure
    from iqadef.plugins.defences.fcn import FCNDefence, packaged_weights_path
    from iqadef.plugins.defences.realesrgan import GENERAL_WEIGHTS, WDN_WEIGHTS, RealESRGANDefence
    from iqadef.plugins.metrics.embedded import TinyIQA, packaged_weights

    # the packaged tiny-iqa weights: the sha256 its training record states
    record = json.loads(packaged_weights().parent.joinpath("tiny_iqa.json").read_text())
    assert TinyIQA().identity()["weights"] == [record["weights_sha256"]]
    assert FCNDefence().identity()["weights"] == [sha256_of(packaged_weights_path())]
    # only the Real-ESRGAN files whose blending weight is not 0
    assert RealESRGANDefence(denoise_strength=1.0).weights_in_use() == (GENERAL_WEIGHTS,)
    assert RealESRGANDefence(denoise_strength=0.0).weights_in_use() == (WDN_WEIGHTS,)
    assert RealESRGANDefence().weights_in_use() == (GENERAL_WEIGHTS, WDN_WEIGHTS)
    # DiffPure: the guided checkpoint, or the weight files of a local diffusers folder
    assert DiffPure().weights_in_use() == (GUIDED_256_WEIGHTS,)
    model = tmp_path / "ddpm"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (model / "README.md").write_text("not part of the model")
    ident = DiffPure(model=str(model)).identity()
    assert ident["weights"] == [sha256_of(model / "unet" / "diffusion_pytorch_model.safetensors")]
