"""Run-level numerics (core/numerics.py): ``precision``, ``compile`` and ``channels_last`` reach the metrics'
and neural defences' networks after they load, keep gradients flowing, give float32 outputs, leave classic
defences and attacks alone, are validated with one clear message, and are part of the cells' identity
(a bf16 run reuses no fp32 row; fp32 keeps today's identities)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from repo_paths import REPO_ROOT
from torch import nn

from iqadef.config.registry import parse_run_config
from iqadef.core.errors import ConfigError
from iqadef.core.numerics import Numerics, prepare_module
from iqadef.core.plugins import installed_plugins

ROOT = REPO_ROOT
IMAGES = ROOT / "src" / "iqadef" / "data" / "images"


def config(tmp_path: Path, **extra):
    data = {
        "metrics": ["tiny-iqa"],
        "attacks": ["fgsm"],
        "defences": ["no-defence", "flip", "fcn"],
        "device": "cpu",
        "output": str(tmp_path / "run"),
        **extra,
    }
    return parse_run_config(data, tmp_path / "registry.yaml", plugins=installed_plugins())


def images(n: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, 8, 8, generator=g)
    return nn.functional.interpolate(base, size=(size, size), mode="bilinear").clamp(0, 1)


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("precision", "fp64", "precision: 'fp64' must be one of fp32, bf16, fp16"),
        ("compile", "yes", "compile: 'yes' must be true or false"),
        ("channels_last", 1, "channels_last: 1 must be true or false"),
        ("precision", ["bf16"], "precision: ['bf16'] must be one of"),
        ("precision", {"a": 1}, "precision: {'a': 1} must be one of"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, key, value, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config(tmp_path, **{key: value})


def test_fp32_keeps_identities_and_other_numerics_change_only_networks(tmp_path):
    plain = config(tmp_path)
    explicit = config(tmp_path, precision="fp32", compile=False, channels_last=False)
    bf16 = config(tmp_path, precision="bf16")
    last = config(tmp_path, channels_last=True)
    keys = lambda c: [c.metrics[0].key(), c.attacks[0].key(), *[d.key() for d in c.defences]]  # noqa: E731
    assert keys(plain) == keys(explicit)
    for other in (bf16, last):
        k0, k1 = keys(plain), keys(other)
        assert k1[0] != k0[0]  # tiny-iqa's network
        assert k1[4] != k0[4]  # fcn's network
        assert k1[1:4] == k0[1:4]  # the attack, no-defence and flip ignore the keys
    assert bf16.attacks[0].attack.numerics is None and bf16.defences[1].numerics is None


def test_composed_defence_stage_gets_the_numerics(tmp_path):
    c32 = config(tmp_path, defences=[["fcn", "flip"]])
    c16 = config(tmp_path, defences=[["fcn", "flip"]], precision="fp16")
    fcn, flip = c16.defences[0].stages
    assert fcn.numerics == Numerics("fp16") and flip.numerics is None
    assert c16.defences[0].key() != c32.defences[0].key()
    fcn.load("cpu")
    assert next(fcn.network.parameters()).dtype == torch.float16
    out = c16.defences[0].load("cpu").purify(images())
    assert out.dtype == torch.float32 and out.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("precision,tol", [("bf16", 5.0), ("fp16", 1.0)])
def test_low_precision_metric_scores_float32_and_keeps_gradients(tmp_path, precision, tol):
    x = images()
    ref_metric = config(tmp_path).metrics[0].load("cpu")
    metric = config(tmp_path, precision=precision).metrics[0].load("cpu")
    assert metric.net._iqadef_numerics == Numerics(precision)
    assert {p.dtype for p in metric.net.parameters()} == {torch.float32}  # tiny-iqa: autocast style
    xg = x.clone().requires_grad_(True)
    scores = metric.score(xg)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    (grad,) = torch.autograd.grad(scores.sum(), xg)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    expected = ref_metric.score(x)
    assert 0 < (scores.detach() - expected).abs().max() < tol  # it did run in low precision, and stays close
    # an attack runs through it: FGSM moves the image
    from iqadef.plugins.attacks.fgsm import FGSM

    adv = FGSM().run(metric, x, seed=0)
    assert adv.dtype == torch.float32 and (adv - x).abs().max() > 0


def test_cast_style_casts_weights_and_inputs(tmp_path):
    fcn = config(tmp_path, precision="bf16").defences[2].load("cpu")
    assert {p.dtype for p in fcn.network.parameters()} == {torch.bfloat16}
    ref = config(tmp_path).defences[2].load("cpu").purify(images())
    out = fcn.purify(images())
    assert out.dtype == torch.float32 and 0 < (out - ref).abs().max() < 0.05


def test_loading_twice_applies_once(tmp_path):
    metric = config(tmp_path, precision="bf16").metrics[0]
    metric.load("cpu")
    forward = metric.net.forward
    metric.load("cpu")
    from iqadef.core.numerics import apply_precision

    apply_precision(metric)
    assert metric.net.forward is forward
    assert metric.score(images()).dtype == torch.float32


def test_channels_last_gives_the_same_scores(tmp_path):
    x = images()
    ref = config(tmp_path).metrics[0].load("cpu").score(x)
    metric = config(tmp_path, channels_last=True).metrics[0].load("cpu")
    assert metric.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(metric.score(x), ref, atol=1e-3)
    fcn = config(tmp_path, channels_last=True).defences[2].load("cpu")
    out = fcn.purify(x)
    assert out.is_contiguous() and torch.allclose(out, config(tmp_path).defences[2].load("cpu").purify(x), atol=1e-5)


def test_autocast_style_keeps_float32_weights_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 3, 1))
    ref = nn.Sequential(*[m for m in net])  # same modules, before preparing: compute the reference first
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    expected = ref(x).detach()
    prepare_module(net, Numerics("bf16"), style="autocast", device="cpu")
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    out = net(x)
    assert out.dtype == torch.float32 and (out - expected).abs().max() < 0.1
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="already prepared"):
        prepare_module(net, Numerics("fp16"), style="autocast")


def test_a_run_in_another_precision_reuses_no_fp32_row(tmp_path):
    from iqadef.execute import run_grid

    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(IMAGES / "coins.png", folder / "coins.png")
    grid = {"dataset": {"images": str(folder)}, "defences": ["no-defence", "fcn"], "batch_size": 1}
    first = run_grid(config(tmp_path, **grid), progress=False)
    assert first.computed == 2 and first.failed == 0
    bf16 = run_grid(config(tmp_path, **grid, precision="bf16"), progress=False)
    assert bf16.computed == 2 and bf16.skipped == 0 and bf16.other_cells == 2
    assert not set(bf16.table.get("metric_key", [])) & set(first.table.get("metric_key", []))
    again = run_grid(config(tmp_path, **grid), progress=False)  # back to fp32: the stored rows are reused
    assert again.computed == 0 and again.skipped == 2
    import pandas as pd

    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(df) == 2
    keys = set(df["metric_key"])
    assert keys == {config(tmp_path, **grid).metrics[0].key()}


@pytest.mark.slow
def test_compile_on_cpu_matches_eager(tmp_path):
    x = images()
    ref = config(tmp_path).metrics[0].load("cpu")
    metric = config(tmp_path, compile=True).metrics[0].load("cpu")
    xg = x.clone().requires_grad_(True)
    scores = metric.score(xg)
    (grad,) = torch.autograd.grad(scores.sum(), xg)
    xr = x.clone().requires_grad_(True)
    expected = ref.score(xr)
    (grad_ref,) = torch.autograd.grad(expected.sum(), xr)
    assert torch.allclose(scores.detach(), expected.detach(), atol=1e-3)
    # fused kernels round differently: the gradient an attack follows stays the same direction
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(1), grad_ref.flatten(1), dim=1)
    assert (cosine > 0.999).all()
    assert metric.net._compiled_call_impl is not None  # it did compile (nn.Module.compile)
