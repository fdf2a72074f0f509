"""MPRNet purifier: official checkpoint layout, reflect padding to a multiple of 8, differentiability."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from iqadef import WeightsError
from iqadef.plugins.defences import mprnet as mprnet_module
from iqadef.plugins.defences._mprnet_arch import OFFICIAL_CONFIG, MPRNet
from iqadef.plugins.defences.mprnet import MPRNetDefence, pad_to_multiple

TINY = dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1, reduction=4)

# sha256 of the sorted "key:shape" lines of the state dict of swz30/MPRNet Denoising/MPRNet.py's MPRNet(),
# computed from the official file (316 entries; 15,741,079 values counting the shared PReLU once per key).
OFFICIAL_LAYOUT_SHA256 = "3c25cf591d402ee6ce8d93bebbb46f2116619dff433179a502ddf95340611a84"


class TinyMPRNet(MPRNetDefence):
    arch_config = {**OFFICIAL_CONFIG, **TINY}


def _layout_hash(state: dict) -> str:
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _official_checkpoint(path, config, *, prefix="module.", seed=0):
    """A checkpoint as train.py of the reference saves it: {'epoch', 'state_dict', 'optimizer'}, DataParallel keys."""
    torch.manual_seed(seed)
    state = {prefix + k: torch.randn_like(v) * 0.05 for k, v in MPRNet(**config).state_dict().items()}
    torch.save({"epoch": 80, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}}, path)
    return state


def test_official_config_has_the_official_key_layout():
    with torch.device("meta"):
        network = MPRNet(**OFFICIAL_CONFIG)
    state = network.state_dict()
    assert len(state) == 316
    assert _layout_hash(state) == OFFICIAL_LAYOUT_SHA256
    assert tuple(state["shallow_feat1.1.body.1.weight"].shape) == (1,)  # the one shared PReLU
    assert tuple(state["stage3_orsnet.orb1.body.8.weight"].shape) == (112, 112, 3, 3)
    assert tuple(state["stage2_encoder.csff_dec3.weight"].shape) == (176, 176, 1, 1)
    assert tuple(state["tail.weight"].shape) == (3, 112, 3, 3)


def test_official_layout_checkpoint_loads_and_purifies(tmp_path):
    path = tmp_path / "model_denoising.pth"
    saved = _official_checkpoint(path, {**OFFICIAL_CONFIG, **TINY})
    defence = TinyMPRNet(weights_path=str(path)).load("cpu")
    loaded = defence.network.state_dict()
    assert set(loaded) == {k[len("module.") :] for k in saved}
    assert torch.equal(loaded["tail.weight"], saved["module.tail.weight"])

    images = torch.rand(2, 3, 40, 44)  # 44 is not a multiple of 8: padded to 48 and cropped back
    out = defence.purify(images)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert defence.differentiable and not defence.randomized and defence.preserves_size


def test_checkpoint_without_dataparallel_prefix_loads(tmp_path):
    path = tmp_path / "plain.pth"
    _official_checkpoint(path, {**OFFICIAL_CONFIG, **TINY}, prefix="")
    TinyMPRNet(weights_path=str(path)).load("cpu")


def test_output_is_the_network_on_the_reflect_padded_input_cropped_back(tmp_path):
    path = tmp_path / "model_denoising.pth"
    _official_checkpoint(path, {**OFFICIAL_CONFIG, **TINY})
    defence = TinyMPRNet(weights_path=str(path)).load("cpu")
    images = torch.rand(1, 3, 33, 40)
    expected = defence.network(F.pad(images, (0, 0, 0, 7), mode="reflect"))[..., :33, :40].clamp(0, 1)
    assert torch.allclose(defence.purify(images), expected, atol=1e-6)


def test_pad_to_multiple_reflects_bottom_and_right():
    images = torch.arange(2 * 3 * 9 * 10, dtype=torch.float32).view(2, 3, 9, 10)
    padded = pad_to_multiple(images, 8)
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., :9, :10], images)
    assert torch.equal(padded[..., 9, :10], images[..., 7, :])  # reflection: the edge row is not repeated
    aligned = images[..., :8, :8]
    assert pad_to_multiple(aligned, 8) is aligned  # already a multiple: untouched
    tiny = torch.rand(1, 3, 3, 3)  # too small to reflect by 5: replicate instead of failing
    assert pad_to_multiple(tiny, 8).shape[-2:] == (8, 8)


def test_gradients_reach_the_input(tmp_path):
    path = tmp_path / "model_denoising.pth"
    _official_checkpoint(path, {**OFFICIAL_CONFIG, **TINY})
    defence = TinyMPRNet(weights_path=str(path)).load("cpu")
    images = (torch.rand(1, 3, 32, 32) * 0.5 + 0.25).requires_grad_(True)
    defence.forward(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_wrong_checkpoint_is_a_clear_weights_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3, 3, 3)}}, path)
    with pytest.raises(WeightsError, match="does not fit"):
        TinyMPRNet(weights_path=str(path)).load("cpu")
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="state_dict"):
        TinyMPRNet(weights_path=str(path)).load("cpu")


def test_missing_weights_offline_names_the_file(offline_home):
    with pytest.raises(WeightsError, match="model_denoising.pth"):
        MPRNetDefence().load("cpu")
    assert mprnet_module.MPRNET_WEIGHTS.urls[0].startswith("https://")
