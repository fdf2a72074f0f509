"""The universal perturbation: training, caching, files, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iqadef import ConfigError
from iqadef.plugins.attacks import uap as uap_module
from iqadef.plugins.attacks.uap import UAP, tile_to, train_uap

from .test_attacks import write_pngs

FAST = {"size": 32, "epochs": 2, "lr": 0.01, "batch_size": 2}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_train_uap_is_bounded_seeded_and_accepts_loaders(cnn_metric, small_images):
    a = train_uap(cnn_metric, small_images, size=32, eps=0.05, lr=0.01, epochs=2, seed=3, batch_size=2)
    b = train_uap(cnn_metric, small_images, size=32, eps=0.05, lr=0.01, epochs=2, seed=3, batch_size=2)
    assert a.shape == (3, 32, 32)
    assert a.abs().max().item() <= 0.05 + 1e-7
    assert torch.equal(a, b)
    # A list of batches (anything iterable, e.g. a DataLoader) works too, with (images, label) items.
    batches = [(small_images[:2], 0), (small_images[2:], 1)]
    c = train_uap(cnn_metric, batches, size=32, eps=0.05, lr=0.01, epochs=2)
    assert c.shape == (3, 32, 32) and c.abs().max().item() > 1e-3
    with pytest.raises(ConfigError):
        train_uap(cnn_metric, [], size=32)


def test_trained_perturbation_raises_the_score(cnn_metric, small_images):
    pert = train_uap(cnn_metric, small_images, size=64, eps=0.1, lr=0.01, epochs=10, batch_size=4)
    with torch.no_grad():
        assert cnn_metric((small_images + pert).clamp(0, 1)).mean() > cnn_metric(small_images).mean()


def test_tiling_repeats_and_crops():
    pert = torch.arange(3 * 4 * 5, dtype=torch.float32).view(3, 4, 5)
    tiled = tile_to(pert, 10, 7)
    assert tiled.shape == (3, 10, 7)
    assert torch.equal(tiled[:, :4, :5], pert)
    assert torch.equal(tiled[:, 4:8, :5], pert)
    assert torch.equal(tiled[:, 8:10, 5:7], pert[:, :2, :2])


def test_plugin_trains_once_caches_and_reuses(cnn_metric, small_images, tmp_path, torch_home, monkeypatch):
    write_pngs(small_images, tmp_path / "train")
    attack = UAP(train_dir=str(tmp_path / "train"), amplitude=0.4, **FAST)
    out = attack.run(cnn_metric, small_images)
    cached = list((torch_home / "hub" / "iqadef" / "uap").glob("*.pt"))
    assert len(cached) == 1 and cached[0].name.startswith(cnn_metric.name)
    assert not list(cached[0].parent.glob(".*"))  # no temporary file left
    assert (out - small_images).abs().max().item() <= attack.bound() + 1e-6
    assert attack.bound() == pytest.approx(0.1 * 0.4)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached perturbation should have been used")

    monkeypatch.setattr(uap_module, "train_uap", no_training)
    again = UAP(train_dir=str(tmp_path / "train"), amplitude=0.4, **FAST).run(cnn_metric, small_images)
    assert torch.equal(out, again)
    # Other training parameters mean another cache entry (and so training).
    with pytest.raises(AssertionError, match="cached"):
        UAP(train_dir=str(tmp_path / "train"), amplitude=0.4, **{**FAST, "epochs": 3}).run(cnn_metric, small_images)


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_perturbation_files_are_tiled_scaled_and_added(cnn_metric, small_images, tmp_path, suffix):
    g = torch.Generator().manual_seed(0)
    pert = (torch.rand((3, 16, 16), generator=g) * 2 - 1) * 0.1
    path = tmp_path / f"uap{suffix}"
    if suffix == ".npy":  # the reference's layout: H x W x 3
        np.save(path, pert.permute(1, 2, 0).numpy())
    else:
        uap_module.save_perturbation(pert, path)
    out = UAP(perturbation_path=str(path), amplitude=0.8).run(cnn_metric, small_images)
    expected = (small_images + 0.8 * tile_to(pert, 64, 64)).clamp(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_bad_inputs_are_config_errors(cnn_metric, small_images, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        UAP(perturbation_path=str(tmp_path / "missing.pt")).run(cnn_metric, small_images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        UAP(train_dir=str(tmp_path / "empty")).run(cnn_metric, small_images)
    torch.save({"perturbation": torch.zeros(2, 5)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="shape"):
        UAP(perturbation_path=str(tmp_path / "bad.pt")).run(cnn_metric, small_images)


def test_bundled_images_are_the_default_training_set():
    from .conftest import bundled_pngs

    if not bundled_pngs():
        pytest.skip("no bundled images yet")
    images = uap_module.load_folder(uap_module.bundled_images_dir(), 32)
    assert images.shape == (len(bundled_pngs()), 3, 32, 32)
    assert 0.0 <= images.min() and images.max() <= 1.0
