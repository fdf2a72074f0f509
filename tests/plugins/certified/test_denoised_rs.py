"""``drs`` and ``ddrs``: rs after a denoiser (a dms-iqa checkpoint) and after one diffusion denoising step
(DiffPure's guided-diffusion model; a tiny one in the official layout stands in for the 2.2 GB checkpoint)."""

from __future__ import annotations

import math

import pytest
import torch
from toy_plugins import ToyMetric

from iqadef.core.errors import ConfigError
from iqadef.core.weights import WeightSpec
from iqadef.plugins.certified.ddrs import DiffusionDenoisedSmoothing, diffusion_step_for
from iqadef.plugins.certified.dms_iqa import Denoiser
from iqadef.plugins.certified.drs import DenoisedRandomizedSmoothing
from iqadef.plugins.certified.rs import RandomizedSmoothing
from iqadef.plugins.defences import diffpure
from iqadef.plugins.defences._guided_diffusion import GuidedUNet, GuidedUNetConfig

TINY = GuidedUNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
)


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.stack(
        [
            torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)]) * 0.4 + 0.5
            for i in range(n)
        ]
    )


def metric() -> ToyMetric:
    m = ToyMetric()
    m.range = (0.0, 2.0)
    return m


def test_drs_with_an_identity_denoiser_is_rs(tmp_path):
    """dms-iqa's denoiser starts as the identity (last layer zero): drs then scores exactly what rs scores."""
    path = tmp_path / "identity.pt"
    torch.save({"model": Denoiser().state_dict(), "sigma": 0.12, "width": 32, "depth": 5}, path)
    x = images()
    kwargs = dict(n=40, n0=10, batch=64, bins=4)
    drs = DenoisedRandomizedSmoothing(weights_path=str(path), **kwargs).load("cpu")
    a, b = drs.smooth(metric(), x, seed=1), RandomizedSmoothing(**kwargs).smooth(metric(), x, seed=1)
    assert torch.equal(a.bin, b.bin) and torch.equal(a.radius, b.radius) and torch.equal(a.value, b.value)
    # a denoiser that does something changes the scores the bins come from
    state = Denoiser().state_dict()
    state = {k: torch.randn_like(v) * 0.1 for k, v in state.items()}
    torch.save({"model": state, "sigma": 0.12, "width": 32, "depth": 5}, path)
    other = DenoisedRandomizedSmoothing(weights_path=str(path), **kwargs).load("cpu")
    samples = other.noisy_scores(metric(), x, seed=1, samples=8)
    plain = RandomizedSmoothing(**kwargs).noisy_scores(metric(), x, seed=1, samples=8)
    assert not torch.allclose(samples, plain)


def test_drs_needs_a_denoiser_for_its_sigma(tmp_path):
    with pytest.raises(ConfigError, match="weights_path"):
        DenoisedRandomizedSmoothing()
    path = tmp_path / "d.pt"
    torch.save({"model": Denoiser().state_dict(), "sigma": 0.25, "width": 32, "depth": 5}, path)
    with pytest.raises(ConfigError, match="sigma"):
        DenoisedRandomizedSmoothing(weights_path=str(path)).load("cpu")


def test_the_diffusion_step_is_the_references():
    """ccrf/calc_ddrs_*.py: t = 0; while real_sigma < 2 sigma: t += 1; real_sigma = sqrt(1 - abar_t) / sqrt(abar_t)."""
    abar = diffpure.alphas_cumprod("guided-256")
    for sigma in (0.01, 0.12, 0.25, 0.5):
        t, real = 0, 0.0
        while real < 2 * sigma:
            t += 1
            real = float((1 - abar[t]).sqrt() / abar[t].sqrt())
        assert diffusion_step_for(sigma, abar) == t
    with pytest.raises(ValueError, match="largest noise level"):
        diffusion_step_for(1000.0, abar)


@pytest.fixture
def tiny_guided(monkeypatch, tmp_path):
    def install(zero: bool):
        torch.manual_seed(1)
        state = {
            k: (torch.zeros_like(v) if zero else torch.randn_like(v) * 0.05)
            for k, v in GuidedUNet(TINY).state_dict().items()
        }
        path = tmp_path / f"tiny_{zero}.pt"
        torch.save(state, path)
        monkeypatch.setitem(
            diffpure.GUIDED_MODELS, "guided-tiny", diffpure.GuidedModel(TINY, WeightSpec(path.name, ()))
        )
        return path

    return install


def test_ddrs_with_a_zero_model_is_rs_at_the_diffusion_noise(tiny_guided):
    """A model predicting epsilon = 0 makes x_0 = clip(2 (x + noise) - 1): the base function is then rs's,
    with the noise the diffusion step adds (slightly above sigma); the radius uses sigma, as the reference."""
    path = tiny_guided(zero=True)
    kwargs = dict(n=40, n0=10, batch=64, bins=4)
    ddrs = DiffusionDenoisedSmoothing(model="guided-tiny", weights_path=str(path), **kwargs).load("cpu")
    t = diffusion_step_for(0.12, diffpure.alphas_cumprod("guided-tiny"))
    abar = diffpure.alphas_cumprod("guided-tiny")[t]
    real = float((1 - abar).sqrt() / abar.sqrt()) / 2
    assert ddrs.noise_sigma() == pytest.approx(real) and real >= 0.12
    x = images()
    got = ddrs.noisy_scores(metric(), x, seed=2, samples=50)
    want = RandomizedSmoothing(sigma=real, **kwargs).noisy_scores(metric(), x, seed=2, samples=50)
    assert torch.allclose(got, want, atol=1e-5)
    out = ddrs.smooth(metric(), x, seed=2)
    ref = RandomizedSmoothing(sigma=real, **kwargs).smooth(metric(), x, seed=2)
    assert torch.equal(out.bin, ref.bin)
    certified = ref.bin >= 0
    assert torch.allclose(out.radius[certified], ref.radius[certified] * 0.12 / real)


def test_ddrs_denoises_with_the_model(tiny_guided):
    """A real (random) model: x_0 = clip((x_t - sqrt(1 - abar) eps(x_t, t)) / sqrt(abar)), written out here."""
    path = tiny_guided(zero=False)
    ddrs = DiffusionDenoisedSmoothing(model="guided-tiny", weights_path=str(path), n=8, n0=2).load("cpu")
    x = images(1)
    noisy = x + ddrs.noise(x, 5)(0, 1)
    abar = diffpure.alphas_cumprod("guided-tiny")
    t = diffusion_step_for(0.12, abar)
    a, b = float(abar[t].sqrt()), float((1 - abar[t]).sqrt())
    with torch.no_grad():
        x_t = a * (2 * noisy - 1)
        eps = ddrs.diffusion.unet(x_t, torch.full((1,), float(t)))[:, :3]
        want = metric().score((((x_t - b * eps) / a).clamp(-1, 1) + 1) / 2)
        got = ddrs.base(metric(), noisy)
    assert torch.allclose(got, want, atol=1e-5)
    assert not math.isclose(float(got), float(metric().score(noisy.clamp(0, 1))), rel_tol=1e-3)
