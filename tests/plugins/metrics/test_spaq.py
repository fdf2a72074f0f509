"""SPAQ baseline: ``BL_release.pt`` (``{'state_dict': Baseline state dict}``, legacy PyTorch 1.1 serialisation)
loads strictly; the batched patch averaging equals the original per-image, per-patch loop; gradients flow;
the default input is the image at its own size (the MSU wrapper), ``preprocess: official`` is
``Image_load``'s PIL ``Resize(512)`` bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
import torchvision.transforms as T
from official_layout import images, random_state
from PIL import Image
from torch import nn

from iqadef import ConfigError, WeightsError
from iqadef.plugins.metrics.spaq import SPAQ, SPAQBaselineNet


def official_baseline_on_meta() -> nn.Module:
    """``Baseline`` of BL_demo.py: ``backbone`` = resnet50 whose fc is Linear(2048, 1)."""
    with torch.device("meta"):
        model = nn.Module()
        model.backbone = torchvision.models.resnet50()
        model.backbone.fc = nn.Linear(2048, 1, bias=True)
    return model


def original_patch_loop(net: nn.Module, image: torch.Tensor, patch: int) -> torch.Tensor:
    """Prepare_image.generate_patches (stride = patch // 2, plus the edge-flush patch) + Baseline + mean,
    one patch at a time."""
    _, height, width = image.shape
    stride = int(patch / 2)
    h_idx = [i * stride for i in range(int((height - patch) / stride) + 1)]
    if height - patch != h_idx[-1]:
        h_idx.append(height - patch)
    w_idx = [i * stride for i in range(int((width - patch) / stride) + 1)]
    if width - patch != w_idx[-1]:
        w_idx.append(width - patch)
    scores = [net(image[None, :, h : h + patch, w : w + patch]) for h in h_idx for w in w_idx]
    return torch.stack(scores).mean(), len(scores)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spaq") / "BL_release.pt"
    torch.save(
        {"state_dict": random_state(official_baseline_on_meta(), seed=0)}, path, _use_new_zipfile_serialization=False
    )  # PyTorch 1.1 wrote the legacy format
    return path


@pytest.fixture(scope="module")
def metric(checkpoint_path):
    return SPAQ(patch_size=32, stride=16, patch_chunk=5, weights_path=str(checkpoint_path)).load("cpu")


def test_official_key_names_and_shapes_match_the_network():
    official = {k: tuple(v.shape) for k, v in official_baseline_on_meta().state_dict().items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in SPAQBaselineNet().state_dict().items()}
    assert ours == official
    assert official["backbone.fc.weight"] == (1, 2048) and official["backbone.conv1.weight"] == (64, 3, 7, 7)


def test_metadata_and_defaults():
    metric = SPAQ()
    assert metric.name == "spaq" and metric.higher_is_better
    assert metric.range == pytest.approx((21.75, 77.76), abs=0.01)
    assert (metric.preprocess, metric.resize, metric.patch_size, metric.stride) == ("msu", None, 224, 112)
    assert SPAQ().key() != SPAQ(preprocess="official").key()
    with pytest.raises(ConfigError, match="stride"):
        SPAQ(patch_size=64, stride=65)


@pytest.mark.parametrize("preprocess", ["official", "msu-resize-512"])
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((600, 800), (512, 682)),  # both sides >= 512: shorter side to 512 (as transforms.Resize(512))
        ((500, 800), (500, 800)),  # one side < 512: kept, as Image_load.adaptive_resize
        ((512, 300), (512, 300)),
        ((100, 300), (224, 672)),  # smaller than a patch: brought up to one patch (the original would fail)
    ],
)
def test_adaptive_resize(size, expected, preprocess):
    metric = SPAQ(preprocess="official") if preprocess == "official" else SPAQ(resize=512)
    assert tuple(metric.prepare(torch.zeros(1, 3, *size)).shape[-2:]) == expected


def test_default_keeps_the_image_at_its_own_size():
    """The MSU wrapper's ``generate_patches_custom`` on the input tensor: no resize."""
    x = torch.rand(1, 3, 600, 800)
    assert torch.equal(SPAQ().prepare(x), x)


def test_official_resize_is_image_load_bit_for_bit():
    """``Image_load.adaptive_resize``: ``ToTensor()(Resize(512, BILINEAR)(img))`` on the PIL image."""
    for array in [skimage.data.hubble_deep_field()[:600, :800], skimage.data.retina()[:700, :530]]:
        array = np.ascontiguousarray(array)
        expected = T.ToTensor()(T.Resize(512, Image.BILINEAR)(Image.fromarray(array)))
        x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
        ours = SPAQ(preprocess="official").prepare(x)[0]
        assert ours.shape == expected.shape
        assert torch.equal((ours * 255).round(), (expected * 255).round())


def test_checkpoint_without_state_dict_key_is_refused(tmp_path):
    path = tmp_path / "BL_release.pt"
    torch.save({"backbone.fc.weight": torch.zeros(1, 2048)}, path)  # a bare state dict, not the release file
    with pytest.raises(WeightsError, match="key 'state_dict'.*backbone.fc.weight"):
        SPAQ(weights_path=str(path)).load("cpu")


def test_official_preprocess_is_8_bit_with_a_straight_through_gradient():
    x = torch.rand(1, 3, 520, 530, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = SPAQ(preprocess="official").prepare(x)
    assert out.shape[-2:] == (512, 521)  # int(512 * 530 / 520)
    assert torch.equal(out.detach() * 255, (out.detach() * 255).round())
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()


@pytest.mark.slow
def test_loads_and_matches_the_original_per_patch_loop(metric):
    x = images(2, size=(40, 56))  # rows [0, 8], cols [0, 16, 24] (edge-flush ones included)
    with torch.no_grad():
        batched = metric.score(x)
        expected = [original_patch_loop(metric.net, x[i], 32) for i in range(2)]
    assert [n for _, n in expected] == [6, 6]
    assert batched.shape == (2,) and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, torch.stack([s for s, _ in expected]), rtol=1e-5, atol=1e-5)
    assert (batched[0] - batched[1]).abs() > 1e-6


def test_batch_scores_like_single_images(metric):
    x = images(3, seed=1, size=(40, 40))
    with torch.no_grad():
        batched = metric.score(x)
        single = torch.cat([metric.score(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_input_everywhere(metric):
    x = images(2, seed=2, size=(40, 52)).requires_grad_(True)
    metric.score(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    # every pixel lies in some patch, the flush-right patch included
    assert (x.grad.abs().sum(dim=1) > 0).float().mean() > 0.99
