"""DiffPure and DiffPure + unsharp: tiny random diffusion models stand in for the 2.2 GB guided-diffusion checkpoint."""

from __future__ import annotations

import hashlib

import pytest
import torch

from iqadef.core.errors import ConfigError, WeightsError
from iqadef.core.plugins import installed_plugins
from iqadef.core.weights import WeightSpec
from iqadef.plugins.defences import diffpure
from iqadef.plugins.defences._guided_diffusion import IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig
from iqadef.plugins.defences.diffpure import DiffPure

# -- fixtures ---------------------------------------------------------------------------------------


def _tiny_unet(zero: bool = False):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    )
    if zero:  # predicts epsilon = 0 everywhere: the purification becomes affine in the image
        with torch.no_grad():
            for p in unet.parameters():
                p.zero_()
    return unet


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ddpm")
    _tiny_unet().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def purifier(unet_dir):
    return DiffPure(model=str(unet_dir), t=3).load("cpu")


@pytest.fixture(scope="module")
def zero_purifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("zero_ddpm")
    _tiny_unet(zero=True).save_pretrained(path)
    return DiffPure(model=str(path), t=3).load("cpu")


TINY_GUIDED = GuidedUNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
)


@pytest.fixture(scope="module")
def tiny_guided_checkpoint(tmp_path_factory):
    """A checkpoint in the official key layout (random weights, all non-zero)."""
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) * 0.05 for k, v in GuidedUNet(TINY_GUIDED).state_dict().items()}
    path = tmp_path_factory.mktemp("guided") / "tiny_uncond.pt"
    torch.save(state, path)
    return path, state


@pytest.fixture
def tiny_guided(monkeypatch, tiny_guided_checkpoint):
    monkeypatch.setitem(
        diffpure.GUIDED_MODELS, "guided-tiny", diffpure.GuidedModel(TINY_GUIDED, WeightSpec("tiny_uncond.pt", ()))
    )
    return tiny_guided_checkpoint


def _images(n=2, size=(16, 16), low=0.0, high=1.0, seed=3):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 3, *size, generator=g)


# -- diffusers backend ------------------------------------------------------------------------------


def test_output_keeps_shape_and_range_and_changes_the_image(purifier):
    x = _images(size=(20, 24))  # not the model's 16x16: resized there and back
    y = purifier.purify(x, seed=1)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert float((y - x).abs().mean()) > 1e-3


def test_same_seed_same_output_other_seed_other_output(purifier):
    x = _images()
    a = purifier.purify(x, seed=11)
    assert torch.equal(a, purifier.purify(x, seed=11))
    assert not torch.allclose(a, purifier.purify(x, seed=12))


def test_clean_and_attacked_image_of_a_pair_get_the_same_noise(zero_purifier):
    # With epsilon = 0 every reverse step is x_{t-1} = x_t / sqrt(alpha_t) + sigma_t z, so the output is the image
    # plus a noise term: with the same seed, two images' outputs differ by exactly the images' difference.
    clean = _images(low=0.3, high=0.7)
    attacked = clean + 0.05
    same = zero_purifier.purify(attacked, seed=5) - zero_purifier.purify(clean, seed=5)
    assert torch.allclose(same, torch.full_like(same, 0.05), atol=1e-5)
    other = zero_purifier.purify(attacked, seed=6) - zero_purifier.purify(clean, seed=5)
    assert float((other - 0.05).abs().max()) > 1e-2


def test_each_image_has_its_own_noise_independent_of_the_batch_size(zero_purifier, purifier):
    x = _images(n=2, low=0.3, high=0.7)
    x[1] = x[0]
    y = zero_purifier.purify(x, seed=2)
    assert float((y[0] - y[1]).abs().max()) > 1e-2  # same image, other position: other noise
    assert torch.allclose(purifier.purify(x[:1], seed=2), purifier.purify(x, seed=2)[:1], atol=1e-5)


def test_t0_is_identity_and_small_t_stays_close(unet_dir):
    x = _images()
    assert torch.equal(DiffPure(model=str(unet_dir), t=0).load("cpu").purify(x, seed=0), x)
    y = DiffPure(model=str(unet_dir), t=1).load("cpu").purify(x, seed=0)
    assert float((y - x).abs().mean()) < 0.02


def test_gradients_reach_the_input(unet_dir):
    defence = DiffPure(model=str(unet_dir), t=2).load("cpu")
    x = _images().requires_grad_(True)
    defence.forward(x, seed=0).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_pipeline_layout_and_its_scheduler_are_used(tmp_path):
    from diffusers import DDPMScheduler

    _tiny_unet().save_pretrained(tmp_path / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    defence = DiffPure(model=str(tmp_path), t=3).load("cpu")
    assert defence.scheduler.config.num_train_timesteps == 100
    assert defence.purify(_images(n=1), seed=0).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="100 diffusion steps"):
        DiffPure(model=str(tmp_path), t=200).load("cpu")


def test_bad_model_values_give_clear_errors(tmp_path, unet_dir):
    with pytest.raises(ConfigError, match="local Hugging Face cache"):
        DiffPure(model=str(tmp_path / "missing")).load("cpu")
    with pytest.raises(ConfigError, match="offline"):
        DiffPure(model="iqadef-tests/no-such-ddpm").load("cpu")
    with pytest.raises(ConfigError, match="not a diffusers model directory"):
        DiffPure(model=str(tmp_path)).load("cpu")
    with pytest.raises(ConfigError, match="weights_path"):
        DiffPure(model=str(unet_dir), weights_path=str(tmp_path / "x.pt")).load("cpu")
    with pytest.raises(ConfigError, match=r"diffpure\.t: 1001"):
        DiffPure(t=1001)


def test_missing_guided_checkpoint_names_file_and_url(offline_home):
    with pytest.raises(WeightsError, match="256x256_diffusion_uncond.pt.*openaipublic"):
        DiffPure().load("cpu")


def test_registered_with_reference_presets():
    registry = installed_plugins()
    cls = registry.get("defences", "diffpure")
    assert cls.randomized and cls.differentiable and cls.preserves_size
    t = next(p for p in cls.params if p.name == "t")
    assert t.default == 5 and t.presets == (5, 10, 20, 30, 50)
    assert cls.weights[0].urls == (
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
    )


# -- guided-diffusion architecture -----------------------------------------------------------------


def _expected_tiny_layout() -> dict[str, tuple]:
    """TINY_GUIDED's state-dict layout, written out by hand from guided-diffusion's UNetModel structure."""
    emb = 128
    out: dict[str, tuple] = {}

    def conv(prefix, cin, cout, k=3):
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = (cout, cin, k, k), (cout,)

    def norm(prefix, c):
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = (c,), (c,)

    def res(prefix, cin, cout):
        norm(f"{prefix}.in_layers.0", cin)
        conv(f"{prefix}.in_layers.2", cin, cout)
        out[f"{prefix}.emb_layers.1.weight"], out[f"{prefix}.emb_layers.1.bias"] = (2 * cout, emb), (2 * cout,)
        norm(f"{prefix}.out_layers.0", cout)
        conv(f"{prefix}.out_layers.3", cout, cout)
        if cin != cout:
            conv(f"{prefix}.skip_connection", cin, cout, k=1)

    def attn(prefix, c):
        norm(f"{prefix}.norm", c)
        out[f"{prefix}.qkv.weight"], out[f"{prefix}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
        out[f"{prefix}.proj_out.weight"], out[f"{prefix}.proj_out.bias"] = (c, c, 1), (c,)

    out["time_embed.0.weight"], out["time_embed.0.bias"] = (emb, 32), (emb,)
    out["time_embed.2.weight"], out["time_embed.2.bias"] = (emb, emb), (emb,)
    conv("input_blocks.0.0", 3, 32)
    res("input_blocks.1.0", 32, 32)
    res("input_blocks.2.0", 32, 32)  # downsampling ResBlock (resblock_updown)
    res("input_blocks.3.0", 32, 64)
    attn("input_blocks.3.1", 64)  # 8 px = downsample rate 2
    res("middle_block.0", 64, 64)
    attn("middle_block.1", 64)
    res("middle_block.2", 64, 64)
    res("output_blocks.0.0", 128, 64)
    attn("output_blocks.0.1", 64)
    res("output_blocks.1.0", 96, 64)
    attn("output_blocks.1.1", 64)
    res("output_blocks.1.2", 64, 64)  # upsampling ResBlock
    res("output_blocks.2.0", 96, 32)
    res("output_blocks.3.0", 64, 32)
    norm("out.0", 32)
    conv("out.2", 32, 6)
    return out


def test_guided_unet_follows_the_official_key_layout():
    state = GuidedUNet(TINY_GUIDED).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == _expected_tiny_layout()


# Taken from openai/guided-diffusion's own UNetModel (create_model(256, 256, 2, learn_sigma=True,
# attention_resolutions="32,16,8", num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)),
# built on the meta device: its sorted "key (shape)" listing, hashed.
OFFICIAL_256_UNCOND_TENSORS = 566
OFFICIAL_256_UNCOND_PARAMETERS = 552_814_086
OFFICIAL_256_UNCOND_LAYOUT_SHA256 = "b9c90be1570d1541c91bede05b270bfb6bd51a7d5432e7b06f3a4c4cb257b1b6"


def test_full_256_uncond_config_matches_the_official_checkpoint_layout():
    with torch.device("meta"):
        state = GuidedUNet(IMAGENET_256_UNCOND).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["input_blocks.0.0.weight"] == (256, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (1024, 256)
    assert shapes["middle_block.1.qkv.weight"] == (3072, 1024, 1)
    assert shapes["output_blocks.17.0.skip_connection.weight"] == (256, 512, 1, 1)
    assert shapes["out.2.weight"] == (6, 256, 3, 3)
    assert len(state) == OFFICIAL_256_UNCOND_TENSORS
    assert sum(v.numel() for v in state.values()) == OFFICIAL_256_UNCOND_PARAMETERS
    listing = "\n".join(f"{k} {shapes[k]}" for k in sorted(shapes))
    assert hashlib.sha256(listing.encode()).hexdigest() == OFFICIAL_256_UNCOND_LAYOUT_SHA256


def test_guided_checkpoint_loads_through_weights_path(tiny_guided):
    path, state = tiny_guided
    defence = DiffPure(model="guided-tiny", weights_path=str(path), t=3).load("cpu")
    for key, value in defence.unet.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = _images(size=(20, 20))
    y = defence.purify(x, seed=4)
    assert y.shape == x.shape and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert torch.equal(y, defence.purify(x, seed=4))
    assert not torch.allclose(y, defence.purify(x, seed=5))


def test_guided_sampler_follows_the_adm_reverse_step(tiny_guided):
    """Reverse steps written out as guided-diffusion's p_sample does them (learned-range variance, x_0 clipped)."""
    path, _ = tiny_guided
    t = 3
    defence = DiffPure(model="guided-tiny", weights_path=str(path), t=t).load("cpu")
    x = _images(low=0.2, high=0.8)
    with torch.no_grad():
        got = defence.purify(x, seed=9)
        generators = defence._image_generators(9, x.shape[0], x.device)

        def draw():
            return torch.cat([torch.randn((1, 3, 16, 16), generator=g) for g in generators])

        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        xt = abar[t - 1].sqrt() * (2 * x - 1) + (1 - abar[t - 1]).sqrt() * draw()
        for i in reversed(range(t)):
            eps, v = defence.unet(xt.float(), torch.full((2,), float(i))).double().chunk(2, dim=1)
            x0 = ((xt - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
            mean = (betas[i] * abar_prev[i].sqrt() / (1 - abar[i])) * x0 + (
                (1 - abar_prev[i]) * (1 - betas[i]).sqrt() / (1 - abar[i])
            ) * xt
            frac = (v + 1) / 2
            logvar = frac * torch.log(betas[i]) + (1 - frac) * post_logvar[i]
            xt = mean + (torch.exp(0.5 * logvar) * draw() if i > 0 else 0)
        want = ((xt + 1) / 2).clamp(0, 1).float()
    assert torch.allclose(got, want, atol=1e-4)


def test_guided_checkpoint_of_another_architecture_is_refused(tiny_guided, tmp_path):
    path, state = tiny_guided
    missing = dict(state)
    missing.pop("out.2.weight")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="out.2.weight"):
        DiffPure(model="guided-tiny", weights_path=str(tmp_path / "missing.pt")).load("cpu")
    wrong = dict(state, **{"out.2.weight": torch.zeros(3, 32, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        DiffPure(model="guided-tiny", weights_path=str(tmp_path / "wrong.pt")).load("cpu")


# -- DiffPure + unsharp ---------------------------------------------------------------------------


def test_diffpure_unsharp_is_diffpure_then_the_registered_unsharp(unet_dir):
    registry = installed_plugins()
    assert "unsharp" in registry.names("defences"), "the `unsharp` defence must be registered for diffpure-unsharp"
    both = registry.get("defences", "diffpure-unsharp")(model=str(unet_dir), t=2, amount=0.5).load("cpu")
    unsharp = registry.get("defences", "unsharp")(kernel_size=5, sigma=1.0, amount=0.5)
    x = _images()
    purified = DiffPure(model=str(unet_dir), t=2).load("cpu").purify(x, seed=3)
    assert torch.allclose(both.purify(x, seed=3), unsharp.purify(purified), atol=1e-6)
    assert {p.name for p in both.params} >= {"t", "model", "weights_path", "kernel_size", "sigma", "amount"}
    with pytest.raises(ConfigError, match="kernel_size"):
        registry.get("defences", "diffpure-unsharp")(kernel_size=4)
