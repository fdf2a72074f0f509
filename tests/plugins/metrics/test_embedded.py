"""The embedded default metric ``tiny-iqa``: registered, packaged weights load, sane and differentiable."""

from __future__ import annotations

import io
import json
from importlib import resources

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from iqadef import WeightsError
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.metrics.embedded import TinyIQA, TinyIQANet, packaged_weights

DATA = resources.files("iqadef").joinpath("data")


def bundled_images() -> dict[str, torch.Tensor]:
    out = {}
    for entry in sorted(DATA.joinpath("images").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".png"):
            with entry.open("rb") as f:
                array = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
            out[entry.name[:-4]] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return out


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1)


@pytest.fixture(scope="module")
def metric() -> TinyIQA:
    return TinyIQA().load("cpu")


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    return bundled_images()


def test_registered_under_its_name():
    cls = InstalledPlugins().get("metrics", "tiny-iqa")
    assert cls is TinyIQA
    assert cls.higher_is_better is True
    low, high = cls.range
    assert low < high


def test_bundled_images_are_same_size_rgb_and_small(images):
    assert 12 <= len(images) <= 16
    assert all(tuple(x.shape) == (3, 256, 256) for x in images.values())
    total = sum(len(e.read_bytes()) for e in DATA.joinpath("images").iterdir() if e.name.endswith(".png"))
    assert total < 3 * 2**20
    assert DATA.joinpath("images", "LICENSES.md").is_file()


def test_weights_file_is_small_and_a_plain_state_dict():
    with resources.as_file(packaged_weights()) as path:
        assert path.stat().st_size < 2 * 2**20
        state = torch.load(path, weights_only=True)
    assert set(state) == set(TinyIQANet().state_dict())


def test_training_record_matches_the_class_range():
    record = json.loads(DATA.joinpath("weights", "tiny_iqa.json").read_text())
    assert tuple(float(v) for v in record["range"]) == TinyIQA.range
    assert record["held_out_srocc"] > 0.3


def test_scores_finite_batched_equals_per_image(metric, images):
    x = torch.stack(list(images.values())[:4])
    batched = metric.score(x)
    assert batched.shape == (4,)
    assert torch.isfinite(batched).all()
    single = torch.cat([metric.score(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(metric.score(x), batched)  # deterministic (eval mode)


def test_other_sizes_are_accepted(metric):
    g = torch.Generator().manual_seed(0)
    scores = metric.score(torch.rand(2, 3, 48, 64, generator=g))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_input_gradients_are_nonzero(metric, images):
    x = torch.stack(list(images.values())[:2]).clone().requires_grad_(True)
    metric.score(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_clean_ranks_above_strong_blur_and_strong_noise(metric, images):
    clean = torch.stack(list(images.values()))
    blurred = TF.gaussian_blur(clean, [21, 21], [3.5, 3.5])
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        s_clean, s_blur, s_noise = metric.score(clean), metric.score(blurred), metric.score(noisy)
    n = len(clean)
    assert (s_clean > s_blur).sum() >= 0.75 * n
    assert (s_clean > s_noise).sum() >= 0.75 * n


def test_strong_jpeg_scores_are_finite_and_close_to_clean(metric, images):
    """Known blind spot (docs/embedded.md): the shipped weights barely react to JPEG, even at quality
    10. This records it, so a retrained model that learns JPEG will flag the docs as out of date."""
    clean = torch.stack(list(images.values()))
    jpegged = torch.stack([jpeg(x, 10) for x in clean])
    with torch.no_grad():
        s_clean, s_jpeg = metric.score(clean), metric.score(jpegged)
    assert torch.isfinite(s_jpeg).all()
    assert (s_clean - s_jpeg).abs().mean() < 0.2 * TinyIQA().span


def test_explicit_weights_path(tmp_path, images):
    path = tmp_path / "other.pt"
    torch.manual_seed(0)
    torch.save(TinyIQANet().state_dict(), path)
    other = TinyIQA(weights_path=str(path)).load("cpu")
    assert torch.isfinite(other.score(images["coins"][None])).all()
    assert other.label.startswith("tiny-iqa[weights_path=")


def test_missing_or_wrong_weights_path_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        TinyIQA(weights_path=str(tmp_path / "nope.pt")).load("cpu")
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="does not fit"):
        TinyIQA(weights_path=str(bad)).load("cpu")
