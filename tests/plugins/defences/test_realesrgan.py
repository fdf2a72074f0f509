"""Real-ESRGAN purifier: official checkpoint layout, denoise-strength blending, outscale 1, gradients."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from iqadef import ConfigError, WeightsError
from iqadef.plugins.defences._realesrgan_arch import OFFICIAL_CONFIG, SRVGGNetCompact
from iqadef.plugins.defences.realesrgan import RealESRGANDefence

TINY = dict(num_feat=8, num_conv=2)

# sha256 of the sorted "key:shape" lines of xinntao/Real-ESRGAN's SRVGGNetCompact(num_feat=64, num_conv=32,
# upscale=4, act_type='prelu') state dict (realesr-general-x4v3), computed from the official file.
OFFICIAL_LAYOUT_SHA256 = "e265cfe11f87607556f0e2fb718539d9d6f1ffd55a9f61b45b0703b6d36c1f82"


@pytest.fixture(autouse=True)
def _offline(offline_home):
    """No download and an empty cache: only the checkpoints the tests write are found."""


class TinyRealESRGAN(RealESRGANDefence):
    arch_config = {**OFFICIAL_CONFIG, **TINY}


def _release_checkpoint(path, seed, key="params"):
    """A checkpoint as the Real-ESRGAN release ships it: {'params': state_dict}."""
    torch.manual_seed(seed)
    template = SRVGGNetCompact(**{**OFFICIAL_CONFIG, **TINY}).state_dict()
    state = {k: torch.randn_like(v) * 0.05 for k, v in template.items()}
    torch.save({key: state}, path)
    return state


@pytest.fixture
def checkpoints(tmp_path):
    general, wdn = tmp_path / "realesr-general-x4v3.pth", tmp_path / "realesr-general-wdn-x4v3.pth"
    return str(general), _release_checkpoint(general, 1), str(wdn), _release_checkpoint(wdn, 2)


def test_official_config_has_the_official_key_layout():
    with torch.device("meta"):
        state = SRVGGNetCompact(**OFFICIAL_CONFIG).state_dict()
    assert len(state) == 101
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == OFFICIAL_LAYOUT_SHA256
    assert tuple(state["body.66.weight"].shape) == (48, 64, 3, 3)  # last conv: 3 * 4 * 4 channels
    assert tuple(state["body.1.weight"].shape) == (64,)  # per-channel PReLU


def test_denoise_strength_blends_the_two_networks(checkpoints):
    general_path, general, wdn_path, wdn = checkpoints
    defence = TinyRealESRGAN(weights_path=general_path, wdn_weights_path=wdn_path, denoise_strength=0.2).load("cpu")
    loaded = defence.network.state_dict()
    assert set(loaded) == set(general)
    for key in general:
        assert torch.allclose(loaded[key], 0.2 * general[key] + 0.8 * wdn[key], atol=1e-7), key


def test_extreme_strengths_need_only_one_file(checkpoints, tmp_path):
    general_path, general, wdn_path, wdn = checkpoints
    absent = str(tmp_path / "absent.pth")
    strong = TinyRealESRGAN(weights_path=general_path, wdn_weights_path=absent, denoise_strength=1).load("cpu")
    assert torch.equal(strong.network.state_dict()["body.0.weight"], general["body.0.weight"])
    weak = TinyRealESRGAN(weights_path=absent, wdn_weights_path=wdn_path, denoise_strength=0).load("cpu")
    assert torch.equal(weak.network.state_dict()["body.0.weight"], wdn["body.0.weight"])
    with pytest.raises(WeightsError, match="absent.pth"):
        TinyRealESRGAN(weights_path=general_path, wdn_weights_path=absent, denoise_strength=0.5).load("cpu")


def test_params_ema_is_preferred(tmp_path):
    path = tmp_path / "ema.pth"
    state = _release_checkpoint(tmp_path / "unused.pth", 3)
    torch.save({"params": {k: torch.zeros_like(v) for k, v in state.items()}, "params_ema": state}, path)
    defence = TinyRealESRGAN(weights_path=str(path), denoise_strength=1).load("cpu")
    assert torch.equal(defence.network.state_dict()["body.2.weight"], state["body.2.weight"])


def test_outscale_one_keeps_the_size_and_range(checkpoints):
    general_path, _, wdn_path, _ = checkpoints
    images = torch.rand(2, 3, 20, 28)
    for mode in ("bicubic", "bilinear", "area"):
        defence = TinyRealESRGAN(weights_path=general_path, wdn_weights_path=wdn_path, downscale=mode).load("cpu")
        out = defence.purify(images)
        assert out.shape == images.shape
        assert out.min() >= 0 and out.max() <= 1
    # area downscaling of an exact x4 image is the 4x4 block mean of the clamped x4 output
    x4 = defence.network(images).clamp(0, 1)
    assert torch.allclose(defence.purify(images), F.avg_pool2d(x4, 4), atol=1e-6)
    with pytest.raises(ConfigError):
        RealESRGANDefence(downscale="lanczos")


def test_network_adds_a_nearest_upscaled_skip():
    network = SRVGGNetCompact(**{**OFFICIAL_CONFIG, **TINY})
    for p in network.body[-1].parameters():  # silence the residual branch
        torch.nn.init.zeros_(p)
    images = torch.rand(1, 3, 5, 6)
    assert torch.equal(network(images), images.repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_gradients_reach_the_input(checkpoints):
    general_path, _, wdn_path, _ = checkpoints
    defence = TinyRealESRGAN(weights_path=general_path, wdn_weights_path=wdn_path).load("cpu")
    images = (torch.rand(1, 3, 16, 16) * 0.5 + 0.25).requires_grad_(True)
    defence.forward(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert defence.differentiable and not defence.randomized and defence.preserves_size


def test_wrong_layout_is_a_clear_weights_error(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"body.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="params"):
        TinyRealESRGAN(weights_path=str(path), denoise_strength=1).load("cpu")


def test_missing_weights_offline_name_the_files():
    with pytest.raises(WeightsError, match="realesr-general-x4v3.pth"):
        RealESRGANDefence().load("cpu")
