"""train-robust: the AT step equals a step written the metrics_at way, NT's penalty is the finite difference it
claims, a resumed training equals an uninterrupted one, and the checkpoint is an ordinary grid metric."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from iqadef.cli import main
from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.plugins.commands._robust_training import at_loss, fold_mapping, nt_penalty
from iqadef.plugins.metrics.embedded import TinyIQA


def _batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    base = (
        torch.stack(
            [
                torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)])
                for i in range(n)
            ]
        )
        * 0.35
        + 0.5
    )
    return (base + 0.03 * torch.randn(base.shape, generator=g)).clamp(0, 1)


# -- a metrics_at-style step, written from metric_at/{attacks/fgsm.py, loss.py, trainer.py} and pytorch_msssim --
def _reference_norm_in_norm(y_pred, y, p=1.0, q=2.0):
    y = y.view(-1, 1)
    y_pred = y_pred.view(-1, 1)
    n = y_pred.size(0)
    y_pred = y_pred - torch.mean(y_pred)
    y_pred = y_pred / (1e-8 + torch.norm(y_pred, p=q))
    y = y - torch.mean(y)
    y = y / (1e-8 + torch.norm(y, p=q))
    scale = math.pow(2, max(1, 1.0 / q)) * math.pow(n, max(0, 1.0 / p - 1.0 / q))
    return torch.pow(torch.norm(y_pred - y, p=p) / scale, p)


def _reference_ssim(x, y):
    coords = torch.arange(11, dtype=x.dtype) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = (g / g.sum()).repeat(3, 1, 1, 1)

    def filt(t):
        t = F.conv2d(t, g.view(3, 1, 1, 11), groups=3)
        return F.conv2d(t, g.view(3, 1, 11, 1), groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = filt(x), filt(y)
    s1, s2, s12 = filt(x * x) - mu1**2, filt(y * y) - mu2**2, filt(x * y) - mu1 * mu2
    cs_map = (2 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = ((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1)) * cs_map
    return torch.flatten(ssim_map, 2).mean(-1).mean(1)


def _reference_at_step(model, inputs, label, eps, alpha, low, high, penalty=1.0):
    noisy = inputs.clone() + torch.zeros_like(inputs)  # mode 'zero'
    noisy.requires_grad_()
    loss = _reference_norm_in_norm(model(noisy), label)
    grad = torch.autograd.grad(loss, [noisy])[0].detach()
    adv = noisy + alpha * torch.sign(grad)
    adv = torch.clamp(torch.min(torch.max(adv, noisy - eps), noisy + eps), 0.0, 1.0).detach()
    ssim_val = _reference_ssim(adv, inputs)
    adv_label = torch.clamp(label.clone() - penalty * (1 - ssim_val) * (high - low), low, high)
    out = model(torch.concat([adv, inputs]))
    return _reference_norm_in_norm(out, torch.concat([adv_label, label])), adv, adv_label


def test_at_step_equals_a_metrics_at_style_step_on_the_same_batch():
    metric = TinyIQA().load("cpu")
    twin = copy.deepcopy(metric)
    for m in (metric, twin):
        m.net.train().requires_grad_(True)
    x = _batch()
    y = torch.tensor([60.0, 40.0, 55.0, 20.0])
    eps, step, low, high = 4 / 255, 5 / 255, -6.0, 86.0
    loss, adv, adv_target = at_loss(metric.score, x, y, eps=eps, step=step, low=low, high=high)
    ref_loss, ref_adv, ref_target = _reference_at_step(twin.score, x, y, eps, step, low, high)
    assert torch.allclose(adv, ref_adv, atol=1e-6)
    assert (adv - x).abs().max() <= eps + 1e-6 and (adv != x).any()
    assert torch.allclose(adv_target, ref_target, atol=1e-4) and (adv_target < y).all()  # corrected downwards
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
    loss.backward()
    ref_loss.backward()
    for a, b in zip(metric.net.parameters(), twin.net.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_nt_penalty_is_the_finite_difference_gradient_norm():
    # a linear score: the finite difference along sign(grad) is exactly the gradient's L1 norm
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    penalty = nt_penalty(lambda t: (t * w).flatten(1).sum(1), x, h=0.01)
    assert float(penalty.detach()) == pytest.approx(float(w.abs().sum()) ** 2 / 2, rel=1e-9)
    # tiny-iqa: the same quantity computed by hand (gradient by autograd, then the two scores)
    metric = TinyIQA().load("cpu")
    x = _batch(2)
    h = 1e-2
    probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(metric.score(probe).sum(), [probe])
    with torch.no_grad():
        by_hand = (((metric.score(x + h * grad.sign()) - metric.score(x)) / h) ** 2).mean() / 2
    assert float(nt_penalty(metric.score, x, h)) == pytest.approx(float(by_hand), rel=1e-5)
    # and it estimates ||grad f||_1 ** 2 / 2 (tiny-iqa is smooth at this scale)
    l1 = grad.flatten(1).abs().sum(1)
    assert float(by_hand) == pytest.approx(float((l1**2).mean() / 2), rel=0.2)


def test_fold_mapping_puts_the_linear_map_in_the_last_layer():
    metric = TinyIQA().load("cpu")
    x = _batch(3)
    with torch.no_grad():
        before = metric.score(x)
    assert fold_mapping(metric, 1.3, -2.0, x)
    with torch.no_grad():
        assert torch.allclose(metric.score(x), 1.3 * before - 2.0, atol=1e-3)


def _train(tmp_path, image_dir, out, *extra, method="at"):
    return main(
        [
            "train-robust",
            "tiny-iqa",
            "--method",
            method,
            "--out",
            str(out),
            "--images",
            str(image_dir),
            "--epochs",
            "2",
            "--batch-size",
            "3",
            "--crop",
            "16",
            "--lr",
            "1e-3",
            "--quiet",
            "--device",
            "cpu",
            *extra,
        ]
    )


@pytest.mark.parametrize("method", ["at", "free-at"])
def test_resumed_training_equals_an_uninterrupted_one(tmp_path, image_dir, method):
    whole, resumed = tmp_path / "whole.pt", tmp_path / "resumed.pt"
    assert _train(tmp_path, image_dir, whole, method=method) == 0
    assert _train(tmp_path, image_dir, resumed, "--stop-after-epoch", "1", method=method) == 0
    assert not resumed.exists() and (tmp_path / "resumed.pt.resume").is_file()
    assert _train(tmp_path, image_dir, resumed, method=method) == 0  # the same arguments: continues
    assert not (tmp_path / "resumed.pt.resume").exists()
    a, b = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    original = TinyIQA().load("cpu").net.state_dict()
    assert any(not torch.equal(a[k], original[k]) for k in a)  # it did train
    record = json.loads(whole.with_suffix(".json").read_text())
    assert record["method"] == method and record["epochs"] == 2 and len(record["history"]) == 2
    assert len(record["data"]["images"]) == 6 and all(len(i["sha256"]) == 64 for i in record["data"]["images"])
    assert record["data"]["targets"].startswith("self-distillation")
    assert main(["train-robust", "--show", str(whole)]) == 0
    assert _train(tmp_path, image_dir, whole, method=method) == 0  # already trained: nothing to do


def test_a_resume_file_from_other_arguments_is_refused(tmp_path, image_dir, capsys):
    out = tmp_path / "r.pt"
    assert _train(tmp_path, image_dir, out, "--stop-after-epoch", "1") == 0
    assert _train(tmp_path, image_dir, out, "--seed", "5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "r.pt.resume" in err[0] and "Traceback" not in err[0]


def test_the_checkpoint_is_a_grid_metric(tmp_path, image_dir):
    weights = tmp_path / "robust.pt"
    assert (
        main(
            [
                "train-robust",
                "tiny-iqa",
                "--method",
                "nt",
                "--out",
                str(weights),
                "--images",
                str(image_dir),
                "--epochs",
                "1",
                "--batch-size",
                "3",
                "--crop",
                "16",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    registry = tmp_path / "grid.yaml"
    registry.write_text(
        f"dataset: {{images: {image_dir}}}\noutput: out\n"
        f"metrics: [tiny-iqa, {{name: tiny-iqa, weights_path: {weights}}}]\n"
        f"attacks: [{{name: ifgsm, eps: 0.0157, iters: 2}}]\n"
    )
    summary = run_grid(load_run_config(registry), progress=False)
    assert summary.failed == 0
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    assert df["metric"].nunique() == 2 and len(df) == 12
    # the robust metric was trained on these very images: its cells are flagged, the original's are not
    robust = df["metric"] != "tiny-iqa"
    assert df.loc[robust, "trained_on_image"].all() and not df.loc[~robust, "trained_on_image"].any()
    assert any("was trained on 6 of this run's images" in p for p in summary.problems)
    again = run_grid(load_run_config(registry), progress=False)
    assert again.computed == 0 and again.failed == 0  # resumes: nothing left to do
    assert main(["verify", str(summary.run_dir), "--cells", "4", "--seed", "0"]) == 0


@pytest.mark.slow
def test_a_training_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, image_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        "train-robust",
        "tiny-iqa",
        "--method",
        "nt",
        "--images",
        str(image_dir),
        "--epochs",
        "3",
        "--batch-size",
        "3",
        "--crop",
        "16",
        "--lr",
        "1e-3",
        "--quiet",
        "--device",
        "cpu",
    ]
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    assert main([*args, "--out", str(whole)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "iqadef", *args, "--out", str(killed)], env=env)
    state = tmp_path / "killed.pt.resume"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not killed.exists()  # killed after an epoch, before the end
    assert main([*args, "--out", str(killed)]) == 0
    a, b = torch.load(whole, weights_only=True), torch.load(killed, weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_free_at_keeps_its_perturbation_in_the_ball_and_trains(monkeypatch):
    from iqadef.plugins.commands import _robust_training as rt

    metric = TinyIQA().load("cpu")
    rt.set_training([metric.net], True)
    before = {k: v.clone() for k, v in metric.net.state_dict().items()}
    opt = torch.optim.Adam(metric.net.parameters(), lr=1e-3)
    seen = []
    real = rt.corrected_targets

    def spy(target, clean, adversarial, **kw):
        seen.append((adversarial - clean).abs().max().item())
        return real(target, clean, adversarial, **kw)

    monkeypatch.setattr(rt, "corrected_targets", spy)
    x = _batch(4)
    y = torch.tensor([60.0, 40.0, 55.0, 20.0])
    config = rt.RobustConfig(method="free-at", replays=3).resolved()
    loss, drop, delta = rt._free_at_minibatch(metric.score, opt, x, y, config, -6.0, 86.0)
    assert len(seen) == 3 and seen[0] == 0 and 0 < seen[1] <= config.eps + 1e-6 and seen[2] <= config.eps + 1e-6
    assert drop > 0 and torch.isfinite(loss) and 0 < delta.abs().max() <= config.eps + 1e-6
    # the next minibatch starts from the carried perturbation (Shafahi et al., Alg. 1), not from zero
    rt._free_at_minibatch(metric.score, opt, x, y, config, -6.0, 86.0, delta=delta)
    assert seen[3] > 0
    assert any(not torch.equal(v, before[k]) for k, v in metric.net.state_dict().items())


def test_with_mos_the_targets_are_the_mos(tmp_path, image_dir):
    mos = tmp_path / "mos.csv"
    mos.write_text("image,mos\n" + "".join(f"img{i}.png,{10 + 12 * i}\n" for i in range(6)))
    out = tmp_path / "mos.pt"
    assert (
        main(
            [
                "train-robust",
                "tiny-iqa",
                "--method",
                "at",
                "--out",
                str(out),
                "--images",
                str(image_dir),
                "--mos",
                str(mos),
                "--epochs",
                "1",
                "--batch-size",
                "3",
                "--crop",
                "16",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["data"]["targets"] == "mos"
    assert sorted(i["mos"] for i in record["data"]["images"]) == [10 + 12 * i for i in range(6)]
    assert record["final_losses"]["target_drop"] > 0  # score correction lowered the adversarial targets
