"""Contract checks shared by all classic purifiers: flags, presets, range, size, seeds, gradients."""

from __future__ import annotations

import pytest
import torch

from iqadef.core.errors import ConfigError

# name: (randomized, differentiable, preserves_size, {param: presets})
EXPECTED = {
    "flip": (False, True, True, {}),
    "random-rotate": (True, True, True, {"angle_limit": [10, 15, 20, 30, 50]}),
    "random-crop": (True, True, False, {"size": [32, 64, 128, 256, 288]}),
    "resize": (False, True, False, {"scale": [0.1, 0.25, 0.5, 0.75, 0.9]}),
    "upscale": (False, True, True, {"scale": [0.1, 0.25, 0.5, 0.75, 0.9]}),
    "jpeg": (False, False, True, {"quality": [10, 30, 50, 70, 90]}),
    "diffjpeg": (False, True, True, {"quality": [10, 30, 50, 70, 90]}),
    "median-blur": (False, True, True, {"kernel_size": [3, 5, 7, 9, 11]}),
    "gaussian-blur": (False, True, True, {"kernel_size": [3, 5, 7, 9, 11]}),
    "unsharp": (False, True, True, {"kernel_size": [3, 5, 7, 9, 11]}),
    "color-quantization": (False, False, True, {"levels": [2, 5, 16, 20, 25]}),
    "random-noise": (True, True, True, {"sigma": [0.01, 0.025, 0.05, 0.075, 0.1]}),
}
DEFAULTS = {
    "random-rotate": {"angle_limit": 15},
    "random-crop": {"size": 128},
    "resize": {"scale": 0.5},
    "upscale": {"scale": 0.5},
    "jpeg": {"quality": 50},
    "diffjpeg": {"quality": 50},
    "median-blur": {"kernel_size": 3},
    "gaussian-blur": {"kernel_size": 3},
    "unsharp": {"kernel_size": 5, "sigma": 1.0, "amount": 1.0},
    "color-quantization": {"levels": 16},
    "random-noise": {"sigma": 0.01},
    "flip": {"axes": "hw"},
}
NAMES = sorted(EXPECTED)
# small enough that random-crop really crops a 48x56 image
SMALL = {"random-crop": {"size": 24}}


@pytest.mark.parametrize("name", NAMES)
def test_flags_defaults_and_presets_are_described(name, make_defence):
    cls = type(make_defence(name))
    info = cls.describe()
    randomized, differentiable, preserves_size, presets = EXPECTED[name]
    assert (info["randomized"], info["differentiable"], info["preserves_size"]) == (
        randomized,
        differentiable,
        preserves_size,
    )
    described = {p["name"]: p for p in info["params"]}
    for param, values in presets.items():
        assert described[param]["presets"] == values
    for param, value in DEFAULTS[name].items():
        assert described[param]["default"] == value
    assert info["doc"].splitlines()[0].strip()


@pytest.mark.parametrize("name", NAMES)
def test_output_in_unit_range_and_size_as_declared(name, make_defence, images):
    d = make_defence(name, **SMALL.get(name, {}))
    out = d.purify(images, seed=3)
    assert out.dtype == images.dtype and out.shape[:2] == images.shape[:2]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()
    if d.preserves_size:
        assert out.shape == images.shape
    else:
        assert out.shape[-2:] != images.shape[-2:]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name, make_defence, images):
    d = make_defence(name, **SMALL.get(name, {}))
    torch.testing.assert_close(d.purify(images, seed=11), d.purify(images, seed=11), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n][0]])
def test_randomized_differ_across_seeds(name, make_defence, images):
    d = make_defence(name, **SMALL.get(name, {}))
    outs = [d.purify(images, seed=s) for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", [n for n in NAMES if not EXPECTED[n][0]])
def test_deterministic_ignore_the_seed(name, make_defence, images):
    d = make_defence(name)
    torch.testing.assert_close(d.purify(images, seed=0), d.purify(images, seed=123), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n][0]])
def test_randomized_give_each_image_its_own_draw(name, make_defence, images):
    d = make_defence(name, **SMALL.get(name, {}))
    twins = images[:1].repeat(2, 1, 1, 1)
    out = d.purify(twins, seed=5)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_input(name, make_defence, make_images):
    # mid-range images so that clipping does not zero the gradient of noise/unsharp
    x = make_images(low=0.2, high=0.8).requires_grad_(True)
    d = make_defence(name, **SMALL.get(name, {}))
    out = d.forward(x, seed=2)
    (out * torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert float(x.grad.abs().sum()) > 0.0


@pytest.mark.parametrize("name", ["jpeg", "color-quantization"])
def test_bpda_forward_value_is_the_real_purification(name, make_defence, images):
    d = make_defence(name)
    torch.testing.assert_close(d.forward(images.clone().requires_grad_(True)).detach(), d.purify(images))


@pytest.mark.parametrize("name", ["median-blur", "gaussian-blur", "unsharp"])
def test_even_kernel_is_refused(name, make_defence):
    with pytest.raises(ConfigError, match="kernel_size"):
        make_defence(name, kernel_size=4)
