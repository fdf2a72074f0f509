"""FCN filter: architecture, weight loading (reference layout, packaged default), and train_fcn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iqadef import ConfigError, WeightsError
from iqadef.plugins.defences import fcn as fcn_module
from iqadef.plugins.defences.fcn import FCN, FCNDefence, _split, train_fcn


def _synthetic_pairs(count: int, size: int = 16, amplitude: float = 0.15, seed: int = 0):
    """Smooth clean images; the "attack" adds one fixed checkerboard (a high-frequency perturbation)."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).float()
    pairs = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 4, 4, generator=generator) * 0.6 + 0.2
        clean = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        pairs.append(((clean + amplitude * checker).clamp(0, 1), clean))
    return pairs


def _psnr(a, b):
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def test_architecture_matches_the_reference_layout():
    state = FCN().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes == {
        "conv1.weight": (64, 3, 3, 3),
        "conv1.bias": (64,),
        "conv2.weight": (16, 64, 3, 3),
        "conv2.bias": (16,),
        "conv3.weight": (3, 16, 3, 3),
        "conv3.bias": (3,),
    }


def test_reference_checkpoint_loads_and_purifies(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "best_fcn.pth"
    torch.save({"model": FCN().state_dict(), "epoch": 17}, path)  # what the reference's train.py saves
    defence = FCNDefence(weights_path=str(path)).load("cpu")
    images = (torch.rand(2, 3, 20, 24) * 0.5 + 0.25).requires_grad_(True)
    out = defence.forward(images)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert images.grad.abs().sum() > 0
    assert defence.differentiable and not defence.randomized and defence.preserves_size


def test_packaged_weights_are_the_default(tmp_path, monkeypatch):
    path = tmp_path / "fcn_tiny-iqa.pt"
    torch.manual_seed(1)
    state = FCN().state_dict()
    torch.save(state, path)
    monkeypatch.setattr(fcn_module, "packaged_weights_path", lambda: path)
    defence = FCNDefence().load("cpu")
    assert torch.equal(defence.network.state_dict()["conv3.weight"], state["conv3.weight"])


def test_no_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fcn_module, "packaged_weights_path", lambda: None)
    with pytest.raises(WeightsError, match="train-fcn"):
        FCNDefence().load("cpu")
    with pytest.raises(WeightsError, match="does not exist"):
        FCNDefence(weights_path=str(tmp_path / "nope.pt")).load("cpu")
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(WeightsError, match="does not fit"):
        FCNDefence(weights_path=str(bad)).load("cpu")


def test_train_fcn_learns_to_remove_a_fixed_perturbation(tmp_path):
    pairs = _synthetic_pairs(15)
    lines = []
    state, record = train_fcn(pairs, epochs=10, lr=3e-3, seed=0, log=lines.append)
    assert record["n_train"] == 12 and record["n_val"] == 3
    assert len(record["train_loss"]) == len(record["val_ssim"]) == len(lines) == 10
    assert record["best_val_ssim"] == max(record["val_ssim"])
    assert record["val_psnr_output"] > record["val_psnr_input"] + 3  # purified is much closer to clean

    # the returned (best) weights, saved and loaded by the plugin, reproduce that gain on the held-out pairs
    path = tmp_path / "fcn.pt"
    torch.save(state, path)
    defence = FCNDefence(weights_path=str(path)).load("cpu")
    attacked = torch.stack([a for a, _ in pairs[12:]])
    clean = torch.stack([c for _, c in pairs[12:]])
    assert _psnr(defence.purify(attacked), clean) > _psnr(attacked, clean) + 3


def test_train_fcn_is_deterministic_and_leaves_the_global_rng_alone():
    pairs = _synthetic_pairs(5, size=8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, record1 = train_fcn(pairs, epochs=2, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    second, record2 = train_fcn(pairs, epochs=2, seed=7)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert record1["val_ssim"] == record2["val_ssim"]


def test_train_fcn_handles_crops_and_mixed_sizes():
    pairs = _synthetic_pairs(3, size=12) + _synthetic_pairs(2, size=10, seed=1)
    _, record = train_fcn(pairs, epochs=1, batch_size=4)
    assert record["n_train"] == 4
    _, record = train_fcn(pairs, epochs=1, batch_size=4, crop=8)
    assert record["crop"] == 8
    with pytest.raises(ConfigError, match="crop"):
        train_fcn(pairs, epochs=1, crop=32)


def test_split_is_deterministic_and_keeps_groups_together():
    assert _split(10, 0.2, None) == (list(range(8)), [8, 9])
    train, val = _split(5, 0.2, ["b", "a", "a", "c", "b"])  # sorted groups a, b | c
    assert train == [0, 1, 2, 4] and val == [3]
    assert _split(2, 0.2, None) == ([0], [1])  # always at least one pair on each side


def test_train_fcn_rejects_bad_arguments():
    pairs = _synthetic_pairs(3, size=8)
    with pytest.raises(ConfigError):
        train_fcn(pairs[:1], epochs=1)
    with pytest.raises(ConfigError):
        train_fcn(pairs, epochs=1, val_fraction=0.0)
    with pytest.raises(ConfigError):
        train_fcn([(torch.rand(3, 8, 8), torch.rand(3, 8, 9))] * 2, epochs=1)


@pytest.mark.slow
def test_shipped_weights_reduce_the_gain_of_ifgsm_on_held_out_images():
    """The packaged FCN (trained on the default grid's pairs) lowers I-FGSM's gain on tiny-iqa on images
    it never saw in training (ihc, retina, rocket: the validation side of its 80/20 split by image)."""
    from iqadef.core.dataset import builtin_images_dir, read_image
    from iqadef.core.plugins import installed_plugins

    registry = installed_plugins()
    metric = registry.get("metrics", "tiny-iqa")().load("cpu")
    attack = registry.get("attacks", "ifgsm")()
    fcn = registry.get("defences", "fcn")().load("cpu")
    x = torch.stack([read_image(builtin_images_dir() / f"{n}.png") for n in ("ihc", "retina", "rocket")])
    x_adv = attack.run(metric, x, seed=0)
    with torch.no_grad():
        f_x, f_adv, f_fcn = metric.score(x), metric.score(x_adv), metric.score(fcn.purify(x_adv))
    gain_undefended = ((f_x - f_adv).abs() / f_x.abs()).mean()
    gain_fcn = ((f_x - f_fcn).abs() / f_x.abs()).mean()
    assert gain_fcn < 0.8 * gain_undefended
