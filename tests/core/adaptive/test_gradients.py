"""Every classic defence passes a usable gradient to adaptive attacks: through ``purify`` when it is
differentiable, through BPDA (``estimate_forward``) when it is not."""

from __future__ import annotations

import pytest
import torch

from iqadef.core.base import Defence
from iqadef.core.compose import Compose
from iqadef.core.errors import WeightsError
from iqadef.core.plugins import InstalledPlugins

SEED = 11


def classic_defences() -> list[type]:
    """Registered defences that need no weights (the neural ones are tested with their own checkpoints)."""
    table = InstalledPlugins().by_kind["defences"]
    return [table[name].cls for name in sorted(table) if not table[name].cls.weights]


def gradient_through_forward(defence: Defence, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.clone().requires_grad_(True)
    out = defence.forward(x, seed=SEED)
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)  # a generic downstream loss
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(base, size=(40, 40), mode="bilinear") * 0.8 + 0.1).clamp(0, 1)


def test_the_registry_has_both_kinds_of_classic_defence():
    kinds = {cls.name: cls.differentiable for cls in classic_defences()}
    assert kinds.get("jpeg") is False and kinds.get("color-quantization") is False
    assert kinds.get("median-blur") is True and kinds.get("random-rotate") is True


@pytest.mark.parametrize("cls", classic_defences(), ids=lambda c: c.name)
def test_forward_gives_the_purified_values_and_a_nonzero_gradient(cls, images):
    try:
        defence = cls().load("cpu")
    except WeightsError:
        pytest.skip(f"{cls.name} needs trained weights")
    out, grad = gradient_through_forward(defence, images)
    with torch.no_grad():
        expected = defence.purify(images, seed=SEED)
    # BPDA must not change the forward pass: the attack optimises the real purification.
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, f"{cls.name}: no gradient reaches the input"
    assert (grad != 0).float().mean() > 0.05, f"{cls.name}: the gradient reaches almost no pixel"


def test_non_differentiable_defences_really_need_bpda(images, registry):
    """Without BPDA the gradient is zero (quantisation) or absent (JPEG through libjpeg)."""
    quant = registry.get("defences", "color-quantization")()
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quant.purify(x).sum(), x)
    assert grad.abs().sum() == 0
    jpeg = registry.get("defences", "jpeg")()
    assert not jpeg.purify(images.clone().requires_grad_(True)).requires_grad


def test_jpeg_bpda_gradient_follows_the_differentiable_codec(images, registry):
    """The BPDA gradient of JPEG is that of kornia's differentiable JPEG at the same quality."""
    jpeg = registry.get("defences", "jpeg")(quality=50)
    _, bpda = gradient_through_forward(jpeg, images)
    x = images.clone().requires_grad_(True)
    soft = registry.get("defences", "diffjpeg")(quality=50).purify(x)
    weights = torch.linspace(-1.0, 1.0, soft.numel()).reshape(soft.shape)
    (direct,) = torch.autograd.grad((soft * weights).sum(), x)
    assert torch.allclose(bpda, direct, atol=1e-5)
    # and it is not the identity (straight-through) gradient
    assert not torch.allclose(bpda, torch.linspace(-1.0, 1.0, images.numel()).reshape(images.shape), atol=1e-3)


def test_composition_mixes_bpda_and_true_gradients(images, registry):
    compose = Compose([registry.get("defences", "median-blur")(), registry.get("defences", "jpeg")()])
    assert not compose.differentiable
    out, grad = gradient_through_forward(compose, images)
    with torch.no_grad():
        expected = compose.purify(images, seed=SEED)
    assert torch.allclose(out, expected, atol=1e-6)
    assert grad.abs().sum() > 0


def test_a_defence_written_with_the_old_name_backward_estimate_still_gets_its_surrogate():
    """Third-party defences written before the rename keep their BPDA surrogate, with a deprecation warning."""
    import pytest as _pytest

    from iqadef import Defence

    with _pytest.warns(DeprecationWarning, match="estimate_forward"):

        class Halve(Defence):
            name = "halve-old-api"

            def purify(self, images, *, seed=None):
                return (images * 0.5).round()

            def backward_estimate(self, images):
                return images * 0.5

    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    Halve().forward(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))
