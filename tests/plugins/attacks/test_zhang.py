"""Zhang et al. attacks (zhang-dists, zhang-lpips, zhang-ssim) and their perceptual distances.

No real weights are available offline: the checkpoints are generated with random values in the official
key layout (torchvision's vgg16 file, LPIPS' lin layers, DISTS' alpha/beta) and found through
IQADEF_WEIGHTS_DIR. The VGG16 classifier weights (~500 MB) are left out of the generated backbone file;
the loader ignores classifier.* keys anyway.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from iqadef import IqadefError, Metric, WeightsError
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.attacks import _perceptual as perceptual

PINNED_BACKBONE = perceptual.VGG16_BACKBONE

ATTACKS = ("zhang-dists", "zhang-lpips", "zhang-ssim")


# -- official-layout checkpoints -----------------------------------------------------------------


def _official_vgg16_shapes() -> dict[str, torch.Size]:
    """Key names and shapes of torchvision's vgg16 state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    return {k: v.shape for k, v in model.state_dict().items()}


def _random_vgg16_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """features.* with He-scaled random values (so activations stay finite), plus the small classifier biases."""
    state = {}
    for key, shape in _official_vgg16_shapes().items():
        if key.startswith("features.") and key.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif key.endswith(".bias"):
            state[key] = torch.randn(shape, generator=generator) * 0.01
    return state


@pytest.fixture(scope="module", autouse=True)
def unpinned_backbone():
    """The generated VGG16 cannot match the real file's sha256 prefix: lift the pin for this module
    (``test_the_real_backbone_pin_refuses_other_files`` checks the pin itself)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(perceptual, "VGG16_BACKBONE", dataclasses.replace(PINNED_BACKBONE, sha256=None))
        yield


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zhang-weights")
    g = torch.Generator().manual_seed(0)
    torch.save(_random_vgg16_state(g), folder / perceptual.VGG16_BACKBONE.filename)
    lins = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(perceptual.VGG_CHANNELS)
    }
    torch.save(lins, folder / perceptual.LPIPS_VGG_LIN.filename)
    n = sum(perceptual.DISTS_CHANNELS)
    torch.save(
        {
            "alpha": 0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=g),
            "beta": 0.1 + 0.01 * torch.randn(1, n, 1, 1, generator=g),
        },
        folder / perceptual.DISTS_ALPHA_BETA.filename,
    )
    return folder


@pytest.fixture
def weights_env(weights_dir, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return weights_dir


@pytest.fixture(scope="module")
def networks(weights_dir):
    """LPIPS and DISTS built once from the generated files (passed as explicit paths)."""
    vgg = weights_dir / perceptual.VGG16_BACKBONE.filename
    lpips = perceptual.LpipsVgg.load(vgg, weights_dir / perceptual.LPIPS_VGG_LIN.filename).eval()
    dists = perceptual.Dists.load(vgg, weights_dir / perceptual.DISTS_ALPHA_BETA.filename).eval()
    return {"lpips": lpips, "dists": dists}


# -- the target metric ---------------------------------------------------------------------------


class _TinyCnnMetric(Metric):
    """A small random CNN (stand-in when the bundled tiny-iqa metric is not available)."""

    name = "test-tiny-cnn"
    range = (0.0, 1.0)

    def setup(self, device):
        g = torch.Generator().manual_seed(1)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def score(self, images):
        return torch.sigmoid(self.net(images)).flatten()


def _bundled_images() -> list[Path]:
    import iqadef

    folder = Path(iqadef.__file__).parent / "data" / "images"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def metric():
    try:
        return InstalledPlugins().get("metrics", "tiny-iqa")().load("cpu")
    except IqadefError:  # not there (yet) or its packaged weights are missing: use the local stand-in
        return _TinyCnnMetric().load("cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four 64x64 images: the bundled ones (centre crops) if present, else smooth random images."""
    paths = _bundled_images()
    if paths:
        import torchvision.transforms.functional as TF
        from PIL import Image

        out = []
        for path in paths[:4]:
            img = TF.to_tensor(Image.open(path).convert("RGB"))
            img = TF.resize(img, 64, antialias=True)
            out.append(TF.center_crop(img, 64))
        return torch.stack(out)
    g = torch.Generator().manual_seed(2)
    coarse = torch.rand(4, 3, 8, 8, generator=g)
    return nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False).clamp(0, 1)


def _attack(name: str, **params):
    return InstalledPlugins().get("attacks", name)(**params)


# -- distances -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["lpips", "dists"])
def test_network_distance_zero_for_identical_and_positive_otherwise(networks, images, which):
    net = networks[which]
    small = images[:2, :, :32, :32]
    with torch.no_grad():
        same = net(small, small)
        noisy = (small + 0.1 * torch.randn(small.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
        different = net(noisy, small)
    assert same.shape == (2,)
    assert same.abs().max() < 1e-5
    assert (different > 1e-3).all()


def test_ssim_distance_zero_for_identical_and_positive_otherwise(images):
    assert perceptual.ssim_distance(images, images).abs().max() < 1e-5
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    d = perceptual.ssim_distance(noisy, images)
    assert d.shape == (4,) and (d > 0.01).all() and (d <= 1).all()


def test_ssim_distance_matches_skimage_structure(images):
    """Same Gaussian-window SSIM as skimage (gaussian_weights, sigma 1.5) away from the borders."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    ours = 1 - perceptual.ssim_distance(noisy[:1], images[:1]).item()
    _, full = skimage_metrics.structural_similarity(
        noisy[0].permute(1, 2, 0).double().numpy(),
        images[0].permute(1, 2, 0).double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
        full=True,
    )
    valid = full[5:-5, 5:-5].mean()  # skimage crops (win-1)/2 = 5 pixels too; no negative values here
    assert ours == pytest.approx(valid, abs=2e-3)


def test_dists_downsamples_like_iqa_pytorch(networks):
    dists = networks["dists"]
    assert dists.downsample(torch.zeros(1, 3, 299, 299)).shape[-1] == 299
    assert dists.downsample(torch.zeros(1, 3, 768, 1024)).shape[-2:] == (256, 341)


def test_ssim_distance_refuses_images_smaller_than_the_window():
    from iqadef import ConfigError

    with pytest.raises(ConfigError, match="window"):
        perceptual.ssim_distance(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# -- weights ---------------------------------------------------------------------------------------


def test_generated_backbone_has_the_official_vgg16_layout(weights_dir):
    official = _official_vgg16_shapes()
    saved = torch.load(weights_dir / perceptual.VGG16_BACKBONE.filename, weights_only=True)
    features = {k: shape for k, shape in official.items() if k.startswith("features.")}
    assert {k: v.shape for k, v in saved.items() if k.startswith("features.")} == features
    assert set(saved) <= set(official)
    assert len(features) == 26  # 13 convolutions, weight + bias


def test_official_layout_checkpoints_load_without_missing_or_unexpected_keys(weights_env):
    """setup() succeeds through IQADEF_WEIGHTS_DIR; load_state_dict_strict would raise on any mismatch."""
    lpips = _attack("zhang-lpips").load("cpu")
    assert torch.equal(
        lpips.network.lin2.model[1].weight,
        torch.load(weights_env / perceptual.LPIPS_VGG_LIN.filename)["lin2.model.1.weight"],
    )
    dists = _attack("zhang-dists").load("cpu")
    saved = torch.load(weights_env / perceptual.DISTS_ALPHA_BETA.filename)
    assert torch.equal(dists.network.weights.beta, saved["beta"])
    backbone = torch.load(weights_env / perceptual.VGG16_BACKBONE.filename)
    assert torch.equal(dists.network.features[28].weight, backbone["features.28.weight"])
    assert not any(p.requires_grad for p in dists.network.parameters())


@pytest.mark.parametrize(
    "name, spec",
    [
        ("zhang-lpips", perceptual.VGG16_BACKBONE),
        ("zhang-lpips", perceptual.LPIPS_VGG_LIN),
        ("zhang-dists", perceptual.DISTS_ALPHA_BETA),
    ],
)
def test_missing_weights_name_the_expected_path(weights_dir, tmp_path, monkeypatch, name, spec):
    partial = tmp_path / "weights"
    partial.mkdir()
    for other in (perceptual.VGG16_BACKBONE, perceptual.LPIPS_VGG_LIN, perceptual.DISTS_ALPHA_BETA):
        if other.filename != spec.filename:
            (partial / other.filename).symlink_to(weights_dir / other.filename)
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(partial))
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsError) as info:
        _attack(name).load("cpu")
    message = str(info.value)
    assert str(partial / spec.filename) in message
    assert spec.urls[0] in message


def test_the_real_backbone_pin_refuses_other_files(weights_dir):
    assert PINNED_BACKBONE.sha256 == "397923af" and PINNED_BACKBONE.filename.startswith("vgg16-397923af")
    with pytest.raises(WeightsError, match=r"sha256 \w+ does not match the pinned 397923af"):
        perceptual.load_weights(PINNED_BACKBONE, weights_dir / PINNED_BACKBONE.filename)


def test_wrong_checkpoints_are_refused_with_the_offending_key(weights_dir, tmp_path):
    bad_lin = tmp_path / "lin.pth"
    lins = torch.load(weights_dir / perceptual.LPIPS_VGG_LIN.filename)
    lins["lin5.model.1.weight"] = lins.pop("lin4.model.1.weight")
    torch.save(lins, bad_lin)
    vgg = weights_dir / perceptual.VGG16_BACKBONE.filename
    with pytest.raises(WeightsError, match="lin5.model.1.weight"):
        perceptual.LpipsVgg.load(vgg, bad_lin)
    bad_shape = tmp_path / "dists.pt"
    torch.save({"alpha": torch.ones(1, 10, 1, 1), "beta": torch.ones(1, 1475, 1, 1)}, bad_shape)
    with pytest.raises(WeightsError, match="alpha"):
        perceptual.Dists.load(vgg, bad_shape)


def test_explicit_paths_are_used(weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(tmp_path))  # empty: only the explicit files can work
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    attack = _attack(
        "zhang-dists",
        backbone_path=str(weights_dir / perceptual.VGG16_BACKBONE.filename),
        calibration_path=str(weights_dir / perceptual.DISTS_ALPHA_BETA.filename),
    )
    assert attack.load("cpu").network is not None


# -- the attacks -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_raises_the_score_and_stays_close(weights_env, metric, images, name):
    """Default settings (10 Adam steps, lr 0.005) on three 32x32 crops (VGG16 on a shared CPU is slow)."""
    attack = _attack(name).load("cpu")
    clean = images[:3, :, :32, :32].contiguous()
    adversarial = attack.run(metric, clean, seed=0)
    assert adversarial.shape == clean.shape and adversarial.dtype == clean.dtype
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        before, after = metric.score(clean), metric.score(adversarial)
    sign = 1 if metric.higher_is_better else -1
    assert sign * (after - before).mean() > 0.01 * metric.span
    # Adam's step is at most lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr per pixel
    assert (adversarial - clean).abs().max() <= 10 * 0.005 * 3.2


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_deterministic_and_batch_independent(weights_env, metric, images, name):
    attack = _attack(name, iterations=2).load("cpu")
    small = images[:2, :, :16, :16].contiguous()
    batch = attack.run(metric, small, seed=0)
    again = attack.run(metric, small, seed=5)
    assert torch.equal(batch, again)
    singles = torch.cat([attack.run(metric, small[i : i + 1], seed=0) for i in range(2)])
    torch.testing.assert_close(batch, singles, atol=1e-4, rtol=0)
    assert not torch.equal(batch, small)
    assert batch.min() >= 0 and batch.max() <= 1


def test_the_attack_does_not_touch_its_input(weights_env, metric, images):
    clean = images[:1, :, :16, :16].clone()
    _attack("zhang-ssim", iterations=1).run(metric, clean, seed=0)
    assert torch.equal(clean, images[:1, :, :16, :16])
