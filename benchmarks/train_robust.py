"""Training cost and effect of ``iqadef train-robust`` on tiny-iqa with the bundled images (CPU by default).

The 14 bundled images are split by name (even positions train, odd positions held out). For each method the
command fine-tunes tiny-iqa on the training half (self-distillation: the bundled images have no MOS), timing
it; then on random crops of the held-out half it measures, for the original and the robust checkpoint:
clean scores (their Pearson/Spearman correlation with the original's), and the gain of I-FGSM at 4/255
(10 iterations, step 1/255; ``(f(x_adv) - f(x)) / range``), with 95% Student-t intervals. JSON on stdout
(and ``--json FILE``), with the machine load (``os.getloadavg``) before and after.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/train_robust.py --methods nt at --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from iqadef.core.dataset import builtin_images_dir, read_image
from iqadef.core.plugins import installed_plugins
from iqadef.plugins.commands._robust_training import sample_crops
from iqadef.plugins.commands.train_robust import TrainRobustCommand, run_training


def interval(values: np.ndarray) -> list[float]:
    mean, sem = float(values.mean()), float(stats.sem(values))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return [mean - half, mean + half]


def evaluate(metric, crops: torch.Tensor, eps: float, batch: int = 8) -> dict[str, np.ndarray]:
    attack = installed_plugins().get("attacks", "ifgsm")(eps=eps, iters=10, alpha=1 / 255)
    clean, attacked = [], []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch]
        with torch.no_grad():
            clean.append(metric.score(x))
        adv = attack.run(metric, x, seed=0)
        with torch.no_grad():
            attacked.append(metric.score(adv))
    return {"clean": torch.cat(clean).numpy(), "attacked": torch.cat(attacked).numpy()}


def input_gradient_l1(metric, crops: torch.Tensor, batch: int = 8) -> np.ndarray:
    """||grad_x f(x)||_1 per crop: what NT penalises (its square, halved), on held-out data."""
    out = []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch].clone().requires_grad_(True)
        grad, = torch.autograd.grad(metric.score(x).sum(), [x])
        out.append(grad.flatten(1).abs().sum(1))
    return torch.cat(out).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["nt", "at"], choices=["at", "free-at", "nt"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--crops-per-image", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--method-lr", nargs="*", default=[], metavar="METHOD=LR", help="a method's own lr")
    parser.add_argument("--nt-weight", type=float, default=1e-3)
    parser.add_argument("--eval-crops", type=int, default=4, help="random 224-px crops per held-out image")
    parser.add_argument("--eps", type=float, default=4.0, help="/255, the evaluation attack's and AT's budget")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train-robust arguments")
    parser.add_argument("--train-offset", type=int, choices=(0, 1), default=0,
                        help="0: even positions train, odd held out; 1: the other way round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    names = sorted(p.name for p in builtin_images_dir().glob("*.png"))
    train, held_out = names[args.train_offset::2], names[1 - args.train_offset::2]
    work = Path(tempfile.mkdtemp(prefix="iqadef-train-robust-"))
    result = {"benchmark": "train_robust", "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_before": os.getloadavg(), "train_images": train,
              "held_out_images": held_out, "settings": vars(args) | {"json": str(args.json)}, "methods": {}}
    images = [read_image(builtin_images_dir() / n, 512) for n in held_out]
    crops, owners = sample_crops(images, 224, args.eval_crops, torch.Generator().manual_seed(12345))
    eps = args.eps / 255
    original = installed_plugins().get("metrics", "tiny-iqa")().load("cpu")
    base = evaluate(original, crops, eps)
    span = original.span
    base_gain = (base["attacked"] - base["clean"]) / span
    result["original"] = {"gain_mean": float(base_gain.mean()), "gain_ci95": interval(base_gain),
                          "input_grad_l1_mean": float(input_gradient_l1(original, crops).mean())}
    method_lr = {k: float(v) for k, _, v in (pair.partition("=") for pair in args.method_lr)}
    sub = argparse.ArgumentParser()
    TrainRobustCommand().configure(sub)
    try:
        for method in args.methods:
            out = work / f"{method}.pt"
            argv = ["tiny-iqa", "--method", method, "--out", str(out), "--epochs", str(args.epochs),
                    "--crops-per-image", str(args.crops_per_image), "--batch-size", str(args.batch_size),
                    "--lr", str(method_lr.get(method, args.lr)), "--nt-weight", str(args.nt_weight), "--eps", str(args.eps),
                    "--device", "cpu", "--quiet", *sum((["--exclude", n] for n in held_out), []), *args.extra]
            started = time.monotonic()
            record = run_training(sub.parse_args(argv))
            seconds = time.monotonic() - started
            robust = installed_plugins().get("metrics", "tiny-iqa")(weights_path=str(out)).load("cpu")
            res = evaluate(robust, crops, eps)
            gain = (res["attacked"] - res["clean"]) / span
            ci, base_ci = interval(gain), result["original"]["gain_ci95"]
            result["methods"][method] = {
                "train_seconds": round(seconds, 1), "under_10_minutes": seconds < 600,
                "final_losses": record["final_losses"], "history": record["history"], "mapping": record["mapping"],
                "input_grad_l1_mean": float(input_gradient_l1(robust, crops).mean()),
                "gain_mean": float(gain.mean()), "gain_ci95": ci,
                "gain_lower_disjoint": ci[1] < base_ci[0],
                "clean_pearson_with_original": float(stats.pearsonr(res["clean"], base["clean"])[0]),
                "clean_spearman_with_original": float(stats.spearmanr(res["clean"], base["clean"])[0]),
                "clean_mean_abs_shift": float(np.abs(res["clean"] - base["clean"]).mean()),
            }
            print(json.dumps({method: result["methods"][method]}, default=float), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
