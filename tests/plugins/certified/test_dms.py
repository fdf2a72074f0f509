"""dms-iqa: the denoiser trains on a run's clean images (`iqadef train-dms`), then certifies in the grid."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from toy_plugins import ToyMetric, install_as_distribution

from iqadef.cli import main
from iqadef.config.registry import load_run_config
from iqadef.core.errors import ConfigError
from iqadef.execute import run_grid
from iqadef.plugins.certified.dms_iqa import DMSIQA, Denoiser, ranking_loss, train_denoiser


def test_ranking_loss_is_zero_only_when_the_order_is_kept():
    ref = torch.tensor([3.0, 1.0, 2.0])
    assert float(ranking_loss(torch.tensor([0.9, 0.1, 0.5]), ref, margin=0.0)) == 0.0
    assert float(ranking_loss(torch.tensor([0.1, 0.9, 0.5]), ref, margin=0.0)) > 0.0


@pytest.mark.slow
def test_training_lowers_the_loss_denoises_and_keeps_the_scores():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    images = [
        torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)]) * 0.4 + 0.5
        for i in range(4)
    ]
    x = torch.stack(images)
    noisy = x + 0.1 * torch.randn(x.shape, generator=g)
    metric = ToyMetric()
    # MSE only: a denoiser
    state, record = train_denoiser(
        images, metric, sigma=0.1, epochs=15, lr=3e-3, width=16, depth=4, rank_weight=0.0, target_weight=0.0
    )
    model = Denoiser(16, 4)
    model.load_state_dict(state)
    with torch.no_grad():
        assert float(((model(noisy) - x) ** 2).mean()) < float(((noisy - x) ** 2).mean())
    # with the ranking and target terms: the metric of the denoised copies moves back towards f(x)
    state, record = train_denoiser(images, metric, sigma=0.1, epochs=15, lr=3e-3, width=16, depth=4)
    assert record["loss_last_epoch"] < record["loss_first_epoch"]
    model.load_state_dict(state)
    with torch.no_grad():
        before = (metric.score(noisy.clamp(0, 1)) - metric.score(x)).abs().mean()
        after = (metric.score(model(noisy).clamp(0, 1)) - metric.score(x)).abs().mean()
    assert float(after) < 0.5 * float(before)


def test_dms_needs_weights_for_its_sigma(tmp_path):
    with pytest.raises(ConfigError, match="train-dms"):
        DMSIQA()
    state, _ = train_denoiser([torch.rand(3, 8, 8)], ToyMetric(), sigma=0.1, epochs=1)
    path = tmp_path / "dms.pt"
    torch.save({"model": state, "sigma": 0.1, "width": 32, "depth": 5}, path)
    with pytest.raises(ConfigError, match="trained for sigma 0.1"):
        DMSIQA(weights_path=path, sigma=0.2).load("cpu")
    DMSIQA(weights_path=path, sigma=0.1).load("cpu")


def test_train_dms_command_then_a_grid_with_dms(tmp_path, image_dir, toy_registry, monkeypatch, request):
    first = tmp_path / "first.yaml"
    first.write_text(f"dataset: {{images: {image_dir}}}\noutput: first\nmetrics: [toy-metric]\nattacks: [toy-sign]\n")
    cfg = load_run_config(first, plugins=toy_registry)
    run_grid(cfg, plugins=toy_registry, progress=False)
    from iqadef.core.plugins import reset_installed_plugins

    monkeypatch.syspath_prepend(str(install_as_distribution(tmp_path)))  # the command finds the toy plugins
    reset_installed_plugins()
    request.addfinalizer(reset_installed_plugins)  # the next test gets the real registry back
    weights = tmp_path / "dms.pt"
    assert main(["train-dms", str(tmp_path / "first"), "--out", str(weights), "--sigma", "0.05", "--epochs", "2"]) == 0
    assert weights.is_file() and weights.with_suffix(".json").is_file()
    second = tmp_path / "second.yaml"
    second.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: second\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ncertified: [{{name: dms-iqa, n: 16, sigma: 0.05, eps: 0.05, "
        f"weights_path: {weights}}}]\n"
    )
    summary = run_grid(load_run_config(second, plugins=toy_registry), plugins=toy_registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    dms = df[df["defence"].str.startswith("dms-iqa")]
    assert summary.failed == 0 and len(dms) == 6
    assert (dms["cert_lower_clean"] <= dms["f_def_clean"]).all() and (
        dms["f_def_clean"] <= dms["cert_upper_clean"]
    ).all()
