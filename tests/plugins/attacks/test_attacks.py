"""Behaviour of the built-in attacks (all but Zhang et al., tested in test_zhang.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from iqadef import Attack, Metric
from iqadef.core.plugins import InstalledPlugins

GRADIENT_ATTACKS = ["fgsm", "ifgsm", "mifgsm", "amifgsm", "pgd-linf", "pgd-l2", "korhonen", "madc", "ssah", "advcf"]
RANDOMIZED = {"pgd-linf", "pgd-l2"}
DETERMINISTIC = [a for a in GRADIENT_ATTACKS if a not in RANDOMIZED]


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins()


def make(registry: InstalledPlugins, name: str, **params) -> Attack:
    return registry.get("attacks", name)(**params)


def uap_params(train_dir) -> dict:
    """A UAP that trains in a second on 64x64 images and is strong enough to show an effect."""
    return {"train_dir": str(train_dir), "size": 64, "epochs": 5, "lr": 0.02, "batch_size": 4, "amplitude": 0.8}


def write_pngs(images: torch.Tensor, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        array = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"img{i}.png")


def assert_bound(attack: Attack, clean: torch.Tensor, adv: torch.Tensor) -> None:
    assert adv.shape == clean.shape and adv.dtype == clean.dtype
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    diff = adv - clean
    if attack.norm == "linf":
        assert diff.abs().max().item() <= attack.bound() + 1e-6
    elif attack.norm == "l2":
        assert diff.flatten(1).norm(dim=1).max().item() <= attack.bound() + 1e-5
    elif attack.norm == "rmse":
        assert diff.pow(2).flatten(1).mean(dim=1).sqrt().max().item() <= attack.bound() + 1e-6
    if attack.name == "advcf":
        assert_monotone_per_channel(clean, adv)


def assert_monotone_per_channel(clean: torch.Tensor, adv: torch.Tensor) -> None:
    """Sorting the input values of a channel sorts that channel's output values."""
    for b in range(clean.shape[0]):
        for c in range(3):
            order = torch.argsort(clean[b, c].flatten(), stable=True)
            out = adv[b, c].flatten()[order]
            assert (out[1:] - out[:-1]).min().item() >= 0.0


def mean_gain(metric: Metric, clean: torch.Tensor, adv: torch.Tensor) -> float:
    with torch.no_grad():
        return (metric(adv).mean() - metric(clean).mean()).item()


# -- the main behaviour test: tiny-iqa on the bundled images ------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_ATTACKS + [pytest.param("uap", marks=pytest.mark.slow)])
def test_attack_raises_tiny_iqa_within_its_bound(registry, tiny_iqa, bundled_images, name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = {}
    if name == "uap":  # trains on the bundled images (the default train_dir), fitted to 64x64
        params = {k: v for k, v in uap_params(tmp_path).items() if k != "train_dir"}
    attack = make(registry, name, **params)
    adv = attack.run(tiny_iqa, bundled_images, seed=0)
    assert_bound(attack, bundled_images, adv)
    gain = mean_gain(tiny_iqa, bundled_images, adv)
    print(f"tiny-iqa mean score gain of {name}: {gain:+.4f}")
    assert gain > 0


# -- the same on the random CNN (always runs) ---------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_ATTACKS + ["uap"])
def test_attack_raises_random_cnn_within_its_bound(registry, cnn_metric, small_images, name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = {}
    if name == "uap":
        write_pngs(small_images, tmp_path / "train")
        params = uap_params(tmp_path / "train")
    attack = make(registry, name, **params)
    adv = attack.run(cnn_metric, small_images, seed=0)
    assert_bound(attack, small_images, adv)
    assert mean_gain(cnn_metric, small_images, adv) > 0


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "madc", "korhonen", "advcf"])
def test_lower_is_better_metrics_are_pushed_down(registry, lower_metric, small_images, name):
    adv = make(registry, name).run(lower_metric, small_images, seed=0)
    with torch.no_grad():
        assert lower_metric(adv).mean() < lower_metric(small_images).mean()


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_same_seed_gives_identical_output(registry, cnn_metric, small_images, name):
    attack = make(registry, name)
    first = attack.run(cnn_metric, small_images, seed=7)
    second = make(registry, name).run(cnn_metric, small_images, seed=7)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_random_start_depends_on_the_seed(registry, cnn_metric, small_images, name):
    attack = make(registry, name)
    assert not torch.equal(attack.run(cnn_metric, small_images, seed=1), attack.run(cnn_metric, small_images, seed=2))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_single_runs(registry, cnn_metric, small_images, name):
    attack = make(registry, name)
    batch = attack.run(cnn_metric, small_images, seed=0)
    singles = torch.cat([attack.run(cnn_metric, small_images[i : i + 1], seed=0) for i in range(len(small_images))])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_metric_is_left_in_eval_mode_and_unchanged(registry, small_images, name):
    from .conftest import RandomCNNMetric

    metric = RandomCNNMetric().load("cpu")
    before = {k: v.clone() for k, v in metric.net.state_dict().items()}
    make(registry, name).run(metric, small_images, seed=0)
    assert not metric.net.training
    for key, value in metric.net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in metric.net.parameters())


def test_ifgsm_matches_a_straightforward_implementation(registry, cnn_metric, small_images):
    eps, alpha, iters = 10 / 255, 1 / 255, 10
    x = small_images.clone()
    p = torch.zeros_like(x, requires_grad=True)
    for _ in range(iters):
        res = x + p
        res.data.clamp_(0.0, 1.0)  # as the reference: the clamp is invisible to autograd
        loss = (1 - cnn_metric(res) / cnn_metric.span).sum()
        loss.backward()
        with torch.no_grad():
            p -= alpha * p.grad.sign()
            p.clamp_(-eps, eps)
        p.grad.zero_()
    expected = (x + p).detach().clamp(0.0, 1.0)
    got = make(registry, "ifgsm").run(cnn_metric, small_images, seed=0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_mifgsm_without_momentum_is_ifgsm(registry, cnn_metric, small_images):
    plain = make(registry, "ifgsm").run(cnn_metric, small_images)
    no_momentum = make(registry, "mifgsm", decay=0.0).run(cnn_metric, small_images)
    assert torch.equal(plain, no_momentum)
    normalised = make(registry, "mifgsm", normalize=True).run(cnn_metric, small_images)
    assert mean_gain(cnn_metric, small_images, normalised) > 0


def test_madc_pulls_back_inside_a_tight_rmse_bound(registry, cnn_metric, small_images):
    attack = make(registry, "madc", eps=0.01, lr=0.01)
    adv = attack.run(cnn_metric, small_images)
    rmse = (adv - small_images).pow(2).flatten(1).mean(dim=1).sqrt()
    assert rmse.max().item() <= 0.01 + 1e-6
    assert rmse.min().item() > 0.005  # the bound is active, not trivially met
    assert mean_gain(cnn_metric, small_images, adv) > 0


def test_amifgsm_bound_holds_without_projection(registry, cnn_metric, small_images):
    attack = make(registry, "amifgsm", eps=0.05, iters=4)
    adv = attack.run(cnn_metric, small_images)
    assert (adv - small_images).abs().max().item() <= 0.05 + 1e-6


def test_pgd_l2_keeps_a_small_bound(registry, cnn_metric, small_images):
    attack = make(registry, "pgd-l2", eps=0.5)
    adv = attack.run(cnn_metric, small_images, seed=0)
    assert (adv - small_images).flatten(1).norm(dim=1).max().item() <= 0.5 + 1e-5
    assert mean_gain(cnn_metric, small_images, adv) > 0


def test_colour_curve_identity_and_quantisation(registry):
    from iqadef.plugins.attacks.advcf import apply_colour_curve

    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 8, 8), generator=g)
    identity = torch.full((2, 3, 64), 1 / 64)
    torch.testing.assert_close(apply_colour_curve(x, identity), x, atol=1e-6, rtol=0)
    # Against the reference's loop over pieces, for random non-negative weights.
    w = torch.rand((2, 3, 64), generator=g)
    loop = torch.zeros_like(x)
    for i in range(64):
        loop += torch.clamp(x - i / 64, 0, 1 / 64) * w[:, :, i, None, None]
    loop *= 64 / w.sum(dim=-1)[:, :, None, None]
    torch.testing.assert_close(apply_colour_curve(x, w), loop, atol=1e-5, rtol=0)


def test_advcf_output_is_quantised(registry, cnn_metric, small_images):
    adv = make(registry, "advcf").run(cnn_metric, small_images)
    torch.testing.assert_close(adv * 255, (adv * 255).round(), atol=1e-4, rtol=0)


def test_spatial_activity_map_is_high_on_edges_and_one_on_flat_images():
    from iqadef.plugins.attacks.korhonen import spatial_activity_map

    flat = torch.full((1, 3, 16, 16), 0.5)
    assert torch.allclose(spatial_activity_map(flat), torch.ones(1, 1, 16, 16))
    edge = torch.zeros((1, 3, 16, 16))
    edge[..., 8:] = 1.0
    m = spatial_activity_map(edge)
    assert m.shape == (1, 1, 16, 16) and m.max().item() == pytest.approx(1.0)
    assert m[0, 0, 8, 8] == pytest.approx(1.0) and m[0, 0, 8, 0] == 0.0


def test_haar_low_band_is_the_block_mean():
    from iqadef.plugins.attacks.ssah import haar_low_frequency

    x = torch.arange(16.0).view(1, 1, 4, 4)
    low = haar_low_frequency(x)
    assert low[0, 0, 0, 0] == low[0, 0, 1, 1] == (0 + 1 + 4 + 5) / 4
    assert haar_low_frequency(torch.ones(1, 1, 3, 5)).shape == (1, 1, 4, 6)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS + ["uap"])
def test_listing_summary_and_norm(registry, name):
    info = registry.get("attacks", name).describe()
    first = info["doc"].splitlines()[0]
    assert 20 < len(first) <= 120
    assert info["norm"] in {"linf", "l2", "rmse", None}
    if info["norm"]:
        assert "eps" in {p["name"] for p in info["params"]}
