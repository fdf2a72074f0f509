"""iqadef benchmarks: the runner against the cost floor and against a peer library (ART).

    python benchmarks/run_all.py            # full run (CPU: a few minutes), writes benchmarks/results/latest.json
    python benchmarks/run_all.py --quick    # seconds; a smoke run with tiny sizes (figures meaningless)

Every figure is a ratio of timings taken in one process, interleaved and repeated (median), so that
machine load cancels out as far as it can. What is measured (docs/performance.md explains the figures):

1. overhead  - iqadef's I-FGSM (10 steps) / 10 x (forward + backward of the same metric, plain torch);
   overhead_paper_size - the same with MetaIQA's network (ResNet-18; random weights: timing only);
2. sharing   - a grid of 1 metric x 1 attack x K defences: time(K) / time(1) and the defences' own cost;
3. batching  - images/s of the embedded metric at several batch sizes (CPU; CUDA when present);
4. memory    - peak RSS of a grid over N vs 4N images, each in a fresh process;
5. peer      - FGSM and PGD (L-inf) through ART's PyTorchRegressor vs iqadef: time ratio, max |diff|;
6. resume    - re-running a finished grid: time, and the number of metric/attack/defence calls (0).
7. ray_pool  - one metric's grid on a local Ray instance: 1 actor vs a pool (`actors_per_metric`), and
               whether both give the same table.
8. guard     - the input guard (core/guard.py: seals on every tensor handed to a plugin) on a unit of the
               default grid (tiny-iqa x I-FGSM x its 16 defences, one batch of 7 built-in images): time with
               the guard / without, and its fingerprints' own cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _bench as B  # noqa: E402

SHARING_DEFENCES = ["no-defence", "flip", {"name": "jpeg", "quality": 50}, "median-blur", "gaussian-blur",
                    "resize", "unsharp", "color-quantization"]


SECTIONS = ["overhead", "overhead_paper_size", "sharing", "batching", "memory", "peer", "resume", "ray_pool",
            "guard"]


def settings(quick: bool) -> dict[str, Any]:
    """Sizes of the full and the quick (smoke) run. The full run is sized for a few minutes on 2 cores."""
    if quick:
        return dict(size=32, batch=1, iters=1, repeats=1, warmup=0, grid_images=1, grid_repeats=1, k=2,
                    batch_sizes=[1], batching_images=1, mem_images=(1, 2), mem_size=32, mem_batch=1,
                    art_repeats=1, pgd_repeats=1, mem_runs=1, paper_repeats=1, pool=2, pool_batch=1, pool_images=2,
                    pool_repeats=1, guard_images=2, guard_defences=3, guard_repeats=1)
    return dict(size=256, batch=4, iters=10, repeats=8, warmup=1, grid_images=4, grid_repeats=2, k=8,
                batch_sizes=[1, 4, 8], batching_images=8, mem_images=(16, 64), mem_size=320, mem_batch=8,
                art_repeats=4, pgd_repeats=3, mem_runs=3, paper_repeats=4, pool=2, pool_batch=2, pool_images=24,
                pool_repeats=2, guard_images=7, guard_defences=None, guard_repeats=5)


# ------------------------------------------------------------------------------------------------
# 1. overhead of the framework on an iterative attack
def plain_forward_backward(net: torch.nn.Module, x: torch.Tensor, size: int = 0,
                           scale: tuple[float, float] = (50.0, 40.0)) -> torch.Tensor:
    """What any torch user would write: resize + normalise + network, gradient of the score sum."""
    from iqadef.plugins.metrics.embedded import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE

    size = size or INPUT_SIZE
    xg = x.detach().requires_grad_(True)
    z = F.interpolate(xg, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    score = scale[0] + scale[1] * net((z - mean) / std)
    (grad,) = torch.autograd.grad(score.sum(), xg)
    return grad


def paper_size_metric(workdir: Path):
    """MetaIQA's architecture (ResNet-18 + head, 224x224) with random weights: the smallest metric of
    the paper, for the overhead on a realistic network (timing does not depend on the weights)."""
    from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet

    torch.manual_seed(0)
    path = workdir / "metaiqa-random.pth"
    torch.save(MetaIQANet().state_dict(), path)
    metric = MetaIQA(weights_path=path, resize=224)   # the 224x224 input the plain loop resizes to
    metric.load(torch.device("cpu"))
    return metric


def bench_overhead(metric, x: torch.Tensor, cfg: dict, size: int = 0,
                   scale: tuple[float, float] = (50.0, 40.0), repeats: int | None = None) -> dict[str, Any]:
    """``size``/``scale``: the metric's input side and its score as ``scale[0] + scale[1] * net(x)``."""
    from iqadef.plugins.attacks.ifgsm import IFGSM

    attack = IFGSM(iters=cfg["iters"])
    iters, eps, alpha = attack.iters, attack.eps, attack.alpha
    net = metric.net

    def floor():
        for _ in range(iters):
            plain_forward_backward(net, x, size, scale)

    def plain_ifgsm():
        p = torch.zeros_like(x)
        for _ in range(iters):
            g = plain_forward_backward(net, (x + p).clamp(0, 1), size, scale)
            p = (p + alpha * g.sign()).clamp(-eps, eps)
        return (x + p).clamp(0, 1)

    def iqadef_ifgsm():
        return attack.run(metric, x, seed=0)

    outputs: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {}
    times = B.interleaved({"floor": floor, "plain_ifgsm": plain_ifgsm, "iqadef_ifgsm": iqadef_ifgsm},
                          repeats or cfg["repeats"], cfg["warmup"], outputs, cpu)
    same = float((outputs["iqadef_ifgsm"] - outputs["plain_ifgsm"]).abs().max())
    return {
        "batch": list(x.shape), "iters": iters,
        "floor_s": B.med(times["floor"]), "plain_ifgsm_s": B.med(times["plain_ifgsm"]),
        "iqadef_ifgsm_s": B.med(times["iqadef_ifgsm"]),
        "ratio_vs_floor": B.median_ratio(times["iqadef_ifgsm"], times["floor"]),
        "ratio_vs_plain_ifgsm": B.median_ratio(times["iqadef_ifgsm"], times["plain_ifgsm"]),
        "plain_ifgsm_vs_floor": B.median_ratio(times["plain_ifgsm"], times["floor"]),
        "ratio_of_min_vs_floor": min(times["iqadef_ifgsm"]) / min(times["floor"]),
        "ratio_of_min_vs_plain_ifgsm": min(times["iqadef_ifgsm"]) / min(times["plain_ifgsm"]),
        "cpu_ratio_vs_floor": B.median_ratio(cpu["iqadef_ifgsm"], cpu["floor"]),
        "cpu_ratio_vs_plain_ifgsm": B.median_ratio(cpu["iqadef_ifgsm"], cpu["plain_ifgsm"]),
        "all_cpu_s": cpu,
        "max_abs_diff_vs_plain_ifgsm": same,
        "target": 1.05, "repeats": repeats or cfg["repeats"], "all_times_s": times,
    }


def bench_overhead_paper_size(workdir: Path, x: torch.Tensor, cfg: dict) -> dict[str, Any]:
    """The overhead figure again with MetaIQA's network (ResNet-18, 224x224; ~8x tiny-iqa's compute)."""
    metric = paper_size_metric(workdir)
    out = bench_overhead(metric, x, cfg, size=224, scale=(0.0, 1.0), repeats=cfg["paper_repeats"])
    return {"metric": "metaiqa architecture, random weights", **out}


# ------------------------------------------------------------------------------------------------
# 2. sharing: attacks are computed once per (metric, attack, batch), whatever the number of defences
def defence_own_cost(metric, defences, x: torch.Tensor, x_adv: torch.Tensor, repeats: int,
                     warmup: int) -> list[float]:
    """Per defence: what the runner does for it alone (purify x and x_a, score both, per-image scores)."""
    from iqadef.core.cells import CellBatch
    from iqadef.core.plugins import installed_plugins
    from iqadef.analysis.scores import image_score_classes

    scores = [cls() for cls in image_score_classes(installed_plugins())]
    with torch.no_grad():
        f_x, f_adv = metric.score(x), metric.score(x_adv)

    def one(defence):
        def run():
            with torch.no_grad():
                dx = defence.purify(x, seed=1)
                dxa = defence.purify(x_adv, seed=1)
                cells = CellBatch(x, x_adv, dx, dxa, f_x, f_adv, metric.score(dx), metric.score(dxa), metric)
                for s in scores:
                    s.compute(cells)
        return run

    fns = {str(i): one(d.load("cpu")) for i, d in enumerate(defences)}
    times = B.interleaved(fns, repeats, warmup)
    return [B.med(times[str(i)]) for i in range(len(defences))]


def bench_sharing(workdir: Path, images: Path, weights, metric, cfg: dict) -> dict[str, Any]:
    from iqadef.execute import run_grid

    k = cfg["k"]
    defences = SHARING_DEFENCES[:k]
    attack = [{"name": "ifgsm", "iters": cfg["iters"]}]
    configs = {
        "k1": B.grid_config(images, workdir / "grid_k1", weights, attack, defences[:1], cfg["batch"]),
        f"k{k}": B.grid_config(images, workdir / f"grid_k{k}", weights, attack, defences, cfg["batch"]),
    }
    def run(config):
        summary = run_grid(config, fresh=True, progress=False)
        if summary.failed:
            raise RuntimeError(f"benchmark grid {config.output}: {summary.failed} cells failed; see its results.csv")
        return summary

    fns = {name: (lambda c=c: run(c)) for name, c in configs.items()}
    cpu: dict[str, list[float]] = {}
    times = B.interleaved(fns, cfg["grid_repeats"], warmup=0, cpu=cpu)
    t1, tk = B.med(times["k1"]), B.med(times[f"k{k}"])

    # the defences' own cost over the same images, measured in this process (batch by batch)
    from iqadef.core.dataset import Dataset
    from iqadef.plugins.attacks.ifgsm import IFGSM

    config = configs[f"k{k}"]
    dataset = Dataset(config.images, None)
    per_defence = [0.0] * len(defences)
    attack_s = 0.0
    for items in dataset.batches(cfg["batch"]):
        x = dataset.load(items)
        start = time.perf_counter()
        x_adv = IFGSM(iters=cfg["iters"]).run(metric, x, seed=0)
        attack_s += time.perf_counter() - start
        costs = defence_own_cost(metric, config.defences, x, x_adv, cfg["grid_repeats"], cfg["warmup"])
        per_defence = [a + b for a, b in zip(per_defence, costs)]
    extra_defences = sum(per_defence[1:])
    observed_extra = tk - t1
    return {
        "defences": [d.label for d in config.defences], "images": len(dataset), "batch": cfg["batch"],
        "time_k1_s": t1, f"time_k{k}_s": tk, "ratio_k_over_1": B.median_ratio(times[f"k{k}"], times["k1"]),
        "ratio_of_min_k_over_1": min(times[f"k{k}"]) / min(times["k1"]),
        "cpu_ratio_k_over_1": B.median_ratio(cpu[f"k{k}"], cpu["k1"]), "all_cpu_s": cpu,
        "k": k,
        "defence_cost_s": dict(zip([d.label for d in config.defences], per_defence)),
        "added_defences_cost_s": extra_defences,
        "observed_added_s": observed_extra,
        "added_over_defences_cost": observed_extra / extra_defences if extra_defences > 0 else None,
        "attack_cost_s": attack_s,
        "time_if_attacks_were_recomputed_s": t1 + (k - 1) * attack_s + extra_defences,
        "run_dir": str(configs[f"k{k}"].output), "all_times_s": times,
    }


# ------------------------------------------------------------------------------------------------
# 3. batching
def bench_batching(metric, images: list[Path], cfg: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        if device == "cuda":
            metric = B.load_metric(getattr(metric, "weights_path", None), "cuda")
        per_device: dict[str, Any] = {}
        n_images = cfg["batching_images"]
        pool = B.load_batch(images[:max(cfg["batch_sizes"])]).to(device)
        fns = {}
        for bs in cfg["batch_sizes"]:
            x = pool[:bs]
            steps = max(1, n_images // bs)

            def forward(x=x, steps=steps):
                with torch.no_grad():
                    for _ in range(steps):
                        metric.score(x)
                if device == "cuda":
                    torch.cuda.synchronize()

            def forward_backward(x=x, steps=steps):
                for _ in range(steps):
                    xg = x.detach().requires_grad_(True)
                    torch.autograd.grad(metric.score(xg).sum(), xg)
                if device == "cuda":
                    torch.cuda.synchronize()

            fns[f"fwd_b{bs}"] = forward
            fns[f"fwdbwd_b{bs}"] = forward_backward
        times = B.interleaved(fns, max(1, cfg["repeats"] // 2), cfg["warmup"])  # 8 images a call
        for bs in cfg["batch_sizes"]:
            done = max(1, n_images // bs) * bs
            per_device[f"batch_{bs}"] = {
                "forward_images_per_s": done / B.med(times[f"fwd_b{bs}"]),
                "forward_backward_images_per_s": done / B.med(times[f"fwdbwd_b{bs}"]),
            }
        out[device] = per_device
    out["image_size"] = cfg["size"]
    return out


# ------------------------------------------------------------------------------------------------
# 4. memory
def bench_memory(workdir: Path, weights, cfg: dict) -> dict[str, Any]:
    small, large = cfg["mem_images"]
    folders = {}
    for n in (small, large):
        folders[n] = workdir / f"mem_{n}"
        B.synthetic_images(folders[n], n, cfg["mem_size"], seed=100)
    runs: dict[int, list[dict]] = {small: [], large: []}
    for _ in range(cfg["mem_runs"]):  # alternated; the allocator's peak varies from run to run
        for n in (small, large):
            cmd = [sys.executable, str(HERE / "grid_child.py"), str(folders[n]), str(workdir / f"mem_run_{n}"),
                   str(torch.get_num_threads()), str(cfg["mem_batch"]), str(weights or "")]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"grid_child.py failed for {n} images:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            if run["failed"]:
                raise RuntimeError(f"memory grid over {n} images: {run['failed']} cells failed: {run['errors']}")
            runs[n].append(run)
    # per size: the run with the median peak (the lower middle one for an even count)
    results = {n: sorted(rs, key=lambda r: r["peak_rss_mb"])[(len(rs) - 1) // 2] for n, rs in runs.items()}
    held = large * 3 * cfg["mem_size"] ** 2 * 4 / 2**20  # MB of float32 pixels if the dataset were held
    return {
        "grid": f"tiny-iqa x fgsm x no-defence, batch {cfg['mem_batch']}, each grid in a fresh process",
        "image_size": cfg["mem_size"],
        f"peak_rss_{small}_images_mb": results[small]["peak_rss_mb"],
        f"peak_rss_{large}_images_mb": results[large]["peak_rss_mb"],
        "ratio_large_over_small": results[large]["peak_rss_mb"] / results[small]["peak_rss_mb"],
        "growth_mb": results[large]["peak_rss_mb"] - results[small]["peak_rss_mb"],
        **{f"grid_part_{n}_images_mb": results[n]["peak_rss_mb"] - results[n]["rss_before_grid_mb"]
           for n in (small, large)},
        "peak_is_grid_only": all(r["peak_is_grid_only"] for r in results.values()),
        f"dataset_{large}_as_float32_mb": held,
        "all_peaks_mb": {str(n): [round(r["peak_rss_mb"], 1) for r in rs] for n, rs in runs.items()},
        "children": {str(k): v for k, v in runs.items()},
    }


# ------------------------------------------------------------------------------------------------
# 5. against a peer library: ART
class _ScoreModel(torch.nn.Module):
    """The iqadef metric as a regressor: images -> scores [B]."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric
        self.net = metric.net  # registered, so ART sees a module with parameters

    def forward(self, x):
        return self.metric.score(x)


class _AscentLoss(torch.nn.Module):
    """``-(attack_loss)`` summed: ART ascends its loss when untargeted, iqadef descends attack_loss.

    Its gradient is exactly the negative of iqadef's, so ``x + step * sign(grad)`` (ART) equals
    ``x - step * sign(grad attack_loss)`` (iqadef) bit for bit; ``y`` is not used.
    """

    def __init__(self, sign: float, span: float):
        super().__init__()
        self.sign, self.span = sign, span

    def forward(self, pred, y):
        return (self.sign * pred / self.span - 1.0).sum()


def _art_order_pgd_diff(metric, x: torch.Tensor, pgd, alpha: float, art_out: np.ndarray) -> float:
    """Max |diff| between ART's PGD and a torch loop that updates its state the way ART does.

    iqadef keeps the perturbation ``delta`` and scores ``x + delta``; ART keeps the image and stores
    ``x + clip(x_adv - x)``, which differs from iqadef's state by float rounding (~1e-8). Pixels whose
    gradient is almost zero can then take other signs, and the runs part there. A loop written in ART's
    order reproduces ART; that is the evidence the difference is rounding, not a different algorithm.
    """
    from iqadef import attack_loss

    x_adv = x.clone()
    for _ in range(pgd.steps):
        xg = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(-attack_loss(metric, xg).sum(), xg)
        x_adv = (x_adv + alpha * grad.sign()).clamp(0.0, 1.0)
        x_adv = x + (x_adv - x).clamp(-pgd.eps, pgd.eps)
    return float((x_adv - torch.from_numpy(art_out)).abs().max())


def bench_peer(metric, x: torch.Tensor, cfg: dict) -> dict[str, Any]:
    try:
        import art  # noqa: F401
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentNumpy
        from art.estimators.regression import PyTorchRegressor
    except ImportError as exc:
        return {"skipped": f"adversarial-robustness-toolbox not installed ({exc}); pip install -e .[bench]"}
    import logging

    logging.getLogger("art").setLevel(logging.WARNING)
    from iqadef.plugins.attacks.fgsm import FGSM
    from iqadef.plugins.attacks.pgd_linf import PGDLinf

    sign = 1.0 if metric.higher_is_better else -1.0
    with torch.no_grad():
        f_clean = metric.score(x)
    regressor = PyTorchRegressor(model=_ScoreModel(metric), loss=_AscentLoss(sign, metric.span),
                                 input_shape=tuple(x.shape[1:]), clip_values=(0.0, 1.0), device_type="cpu")
    x_np = x.numpy().astype(np.float32)
    y_np = np.zeros(x.shape[0], dtype=np.float32)  # ignored by the loss; avoids ART's extra predict()
    out: dict[str, Any] = {"art_version": art.__version__, "batch": list(x.shape)}

    fgsm = FGSM()
    art_fgsm = FastGradientMethod(regressor, norm=np.inf, eps=fgsm.eps, targeted=False, num_random_init=0,
                                  batch_size=x.shape[0])
    pgd = PGDLinf(random_start=False, steps=cfg["iters"])
    alpha = pgd.step_size if pgd.step_size is not None else 2.5 * pgd.eps / pgd.steps
    # ART's PyTorch-specific PGD accepts classifiers only; its generic (NumPy) PGD takes regressors.
    art_pgd = ProjectedGradientDescentNumpy(regressor, norm=np.inf, eps=pgd.eps, eps_step=alpha,
                                              max_iter=pgd.steps, targeted=False, num_random_init=0,
                                              batch_size=x.shape[0], verbose=False)
    for name, ours, theirs, repeats in (
        ("fgsm", lambda: fgsm.run(metric, x, seed=0), lambda: art_fgsm.generate(x_np, y_np), cfg["art_repeats"]),
        ("pgd_linf", lambda: pgd.run(metric, x, seed=0), lambda: art_pgd.generate(x_np, y_np), cfg["pgd_repeats"]),
    ):
        outputs: dict[str, Any] = {}
        cpu: dict[str, list[float]] = {}
        times = B.interleaved({"iqadef": ours, "art": theirs}, repeats, cfg["warmup"], outputs, cpu)
        a, b = outputs["iqadef"], torch.from_numpy(outputs["art"])
        diff = (a - b).abs()
        with torch.no_grad():
            fa, fb = metric.score(a), metric.score(b)
        out[name] = {
            "params": {"eps": fgsm.eps} if name == "fgsm" else
                      {"eps": pgd.eps, "steps": pgd.steps, "step_size": alpha, "random_start": False},
            "iqadef_s": B.med(times["iqadef"]), "art_s": B.med(times["art"]),
            "art_over_iqadef": B.median_ratio(times["art"], times["iqadef"]),
            "cpu_art_over_iqadef": B.median_ratio(cpu["art"], cpu["iqadef"]),
            "max_abs_diff": float(diff.max()),
            "pixels_differing": int((diff > 1e-6).sum()),
            "max_abs_score_diff": float((fa - fb).abs().max()),
            "mean_score_gain_iqadef": float((fa - f_clean).mean()),
            "mean_score_gain_art": float((fb - f_clean).mean()),
            "repeats": repeats,
            **({"max_abs_diff_art_vs_torch_loop_in_art_order": _art_order_pgd_diff(metric, x, pgd, alpha,
                                                                                   outputs["art"])}
               if name == "pgd_linf" else {}),
        }
    return out


# ------------------------------------------------------------------------------------------------
# 6. resume
def bench_resume(workdir: Path, images: Path, weights, cfg: dict, sharing: dict | None) -> dict[str, Any]:
    """Re-runs a finished grid (the sharing figure's K-defence grid when it ran, else a new one)."""
    from iqadef.execute import run_grid

    k = cfg["k"]
    attack = [{"name": "ifgsm", "iters": cfg["iters"]}]
    output = Path(sharing["run_dir"]) if sharing else workdir / "resume"
    make = lambda: B.grid_config(images, output, weights, attack, SHARING_DEFENCES[:k], cfg["batch"])  # noqa: E731
    if sharing:
        full_s = B.med(sharing["all_times_s"][f"k{k}"])
    else:
        full_s = run_grid(make(), fresh=True, progress=False).seconds
    config = make()
    calls = {"metric_setup": 0, "metric_score": 0, "attack_run": 0, "defence_purify": 0}

    def counting(obj, attr, key):
        original = getattr(obj, attr)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        setattr(obj, attr, wrapper)

    for m in config.metrics:
        counting(m, "setup", "metric_setup")
        counting(m, "score", "metric_score")
    for a in config.attacks:
        counting(a.attack, "run", "attack_run")
    for d in config.defences:
        counting(d, "purify", "defence_purify")
    start = time.perf_counter()
    again = run_grid(config, progress=False)
    resume_s = time.perf_counter() - start
    return {"full_run_s": full_s, "resume_s": resume_s, "resume_over_full": resume_s / full_s,
            "cells": again.total, "recomputed_cells": again.computed, "model_calls_on_resume": calls}


# ------------------------------------------------------------------------------------------------
# 7. Ray actor pool: one metric's grid on a local Ray instance, 1 actor vs a pool of `pool` actors
def bench_ray_pool(workdir: Path, images: Path, weights, cfg: dict) -> dict[str, Any]:
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not installed (pip install iqadef[ray])"}
    import pandas as pd

    from iqadef.execute import run_grid

    pool = cfg["pool"]
    started_here = not ray.is_initialized()
    if started_here:  # one instance for every run, so that its start-up cost is in no timing
        ray.init(num_cpus=pool, include_dashboard=False, log_to_driver=False)
    try:
        configs = {}
        for actors in (1, pool):
            config = B.grid_config(images, workdir / f"ray_pool_{actors}", weights,
                                   [{"name": "ifgsm", "iters": cfg["iters"]}], ["no-defence", "jpeg", "median-blur"],
                                   cfg["pool_batch"])
            config.executor = "ray"
            config.ray = {"num_cpus": 1, "torch_threads": 1, "actors_per_metric": actors}
            configs[f"actors_{actors}"] = config
        fns = {name: (lambda c=c: run_grid(c, fresh=True, progress=False)) for name, c in configs.items()}
        times = B.interleaved(fns, cfg["pool_repeats"], warmup=0)
        tables = [pd.read_parquet(c.output / "results.parquet") for c in configs.values()]
        same = bool(tables[0].equals(tables[1]))
    finally:
        if started_here:
            ray.shutdown()
    one, many = times["actors_1"], times[f"actors_{pool}"]
    return {"pool": pool, "images": len(list(images.glob("*.png"))), "batch": cfg["pool_batch"],
            "time_1_actor_s": B.med(one), f"time_{pool}_actors_s": B.med(many),
            "speedup": B.median_ratio(one, many), "tables_equal": same, "all_times_s": times,
            "repeats": cfg["pool_repeats"], "torch_threads_per_actor": 1}


# ------------------------------------------------------------------------------------------------
# 8. the input guard's cost on a unit of the default grid
def bench_guard(workdir: Path, cfg: dict) -> dict[str, Any]:
    """One unit of registry.yaml (its metric, I-FGSM, its defences; one batch of built-in images) computed
    by a Worker with the guard and one without (``guard_inputs=False``), interleaved; the clean side is
    shared as in the grid (9 of 10 units of a batch find it computed), x_a is computed every time.

    Also times the guard's own work inside one guarded unit (every seal taken and checked, the memo check)
    and the unit's fingerprints on batches that are not in the CPU's cache: shares of the unit's time that
    the machine's load blurs far less than the ratio of two unit times."""
    import yaml

    from iqadef.core import guard
    from iqadef.core.dataset import Dataset, builtin_images_dir
    from iqadef.config.registry import parse_run_config
    from iqadef.execute import Unit, Worker

    data = yaml.safe_load((ROOT / "registry.yaml").read_text())
    data.update(output=str(workdir / "guard"), device="cpu", attacks=[{"name": "ifgsm", "iters": cfg["iters"]}])
    if cfg["guard_defences"]:
        data["defences"] = data["defences"][: cfg["guard_defences"]]
    config = parse_run_config(data, ROOT / "registry.yaml")
    dataset = Dataset(builtin_images_dir(), limit=cfg["guard_images"])
    unit = Unit(0, 0, 0, tuple(range(len(config.defences))))
    workers = {name: Worker(config, dataset, workdir, lambda key: None, torch.device("cpu"), guard_inputs=on)
               for name, on in (("guarded", True), ("unguarded", False))}

    def compute(worker):
        def run():
            rows = worker.compute(unit).rows
            failed = [r["error"] for r in rows if r["status"] != "ok"]
            if failed:
                raise RuntimeError(f"guard benchmark: {len(failed)} cells failed: {failed[0]}")
            return rows
        return run

    fns = {name: compute(w) for name, w in workers.items()}
    outputs: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {}
    times = B.interleaved(fns, cfg["guard_repeats"], warmup=1, outputs=outputs, cpu=cpu)
    same = json.dumps(outputs["guarded"], sort_keys=True) == json.dumps(outputs["unguarded"], sort_keys=True)

    # the guard's own work, timed inside one guarded unit: every seal taken, checked, and the memo check
    from iqadef.core.cells import CellBatch

    spent = {"guard_s": 0.0, "fingerprints": 0, "elements": 0}
    patched = [(guard.Seal, "__init__"), (guard.Seal, "intact"), (CellBatch, "changed_measures")]
    originals = [getattr(owner, name) for owner, name in patched]
    original_fingerprint = guard.fingerprint

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["guard_s"] += time.perf_counter() - t0
        return wrapper

    def counting(tensor):
        spent["fingerprints"] += 1
        spent["elements"] += tensor.numel()
        return original_fingerprint(tensor)

    for (owner, name), fn in zip(patched, originals):
        setattr(owner, name, timed(fn))
    guard.fingerprint = counting
    try:
        start = time.perf_counter()
        compute(workers["guarded"])()
        unit_s = time.perf_counter() - start
    finally:
        for (owner, name), fn in zip(patched, originals):
            setattr(owner, name, fn)
        guard.fingerprint = original_fingerprint
    # a fingerprint of a batch that is not in the CPU's cache (as in the grid): 16 copies in turn
    batch = dataset.load(dataset.batches(config.batch_size)[0])
    copies = [batch.clone() for _ in range(16)]
    fp = B.interleaved({"fingerprint": lambda: [original_fingerprint(c) for c in copies]}, 5, warmup=1)
    per_batch = B.med(fp["fingerprint"]) / len(copies)
    return {
        "unit": f"{config.metrics[0].label} x {config.attacks[0].label} x {len(config.defences)} defences, "
                f"{len(dataset.batches(config.batch_size)[0])} images",
        "guarded_s": B.med(times["guarded"]), "unguarded_s": B.med(times["unguarded"]),
        "ratio": B.median_ratio(times["guarded"], times["unguarded"]),
        "cpu_ratio": B.median_ratio(cpu["guarded"], cpu["unguarded"]),
        "ratio_of_min": min(times["guarded"]) / min(times["unguarded"]),
        "guard_s_in_unit": spent["guard_s"], "unit_s": unit_s, "guard_share_of_unit": spent["guard_s"] / unit_s,
        "fingerprints_per_unit": spent["fingerprints"], "fingerprinted_elements_per_unit": spent["elements"],
        "fingerprint_uncached_batch_s": per_batch,
        "fingerprints_share_of_unit_uncached": per_batch / batch.numel() * spent["elements"] / unit_s,
        "rows_identical": same,
        "target": 1.02, "repeats": cfg["guard_repeats"], "all_times_s": times, "all_cpu_s": cpu,
    }


# ------------------------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    rows = []
    o = results.get("overhead")
    if o:
        rows.append(("1 overhead", f"I-FGSM({o['iters']}) / {o['iters']}x(fwd+bwd) floor", f"{o['ratio_vs_floor']:.3f}",
                     f"target <= {o['target']}; CPU-time ratio {o['cpu_ratio_vs_floor']:.3f}; ratio of minima {o['ratio_of_min_vs_floor']:.3f}; "
                     f"vs plain-torch I-FGSM {o['ratio_vs_plain_ifgsm']:.3f} (minima "
                     f"{o['ratio_of_min_vs_plain_ifgsm']:.3f})"))
    o = results.get("overhead_paper_size")
    if o:
        rows.append(("1 overhead", f"same, {o['metric'].split(',')[0]}", f"{o['ratio_vs_floor']:.3f}",
                     f"target <= {o['target']}; CPU-time ratio {o['cpu_ratio_vs_floor']:.3f}; "
                     f"vs plain-torch I-FGSM {o['ratio_vs_plain_ifgsm']:.3f}"))
    s = results.get("sharing")
    if s:
        rows.append(("2 sharing", f"time(K={s['k']}) / time(K=1)", f"{s['ratio_k_over_1']:.2f}",
                     f"added {s['observed_added_s']:.2f}s vs defences' own {s['added_defences_cost_s']:.2f}s "
                     f"(x{s['added_over_defences_cost'] or float('nan'):.2f}); attack {s['attack_cost_s']:.2f}s"))
    b = results.get("batching")
    if b:
        for device in ("cpu", "cuda"):
            if device in b:
                text = ", ".join(f"b{k.split('_')[1]}: {v['forward_images_per_s']:.1f}/"
                                 f"{v['forward_backward_images_per_s']:.1f}" for k, v in b[device].items())
                rows.append(("3 batching", f"{device} images/s fwd/fwd+bwd", "", text))
    m = results.get("memory")
    if m:
        keys = [k for k in m if k.startswith("peak_rss_")]
        rows.append(("4 memory", " vs ".join(k.split("_")[2] + " img" for k in keys) + " peak RSS",
                     f"{m['ratio_large_over_small']:.3f}",
                     " / ".join(f"{m[k]:.0f} MB" for k in keys) + f" (+{m['growth_mb']:.0f} MB); above imports: "
                     + " / ".join(f"{m[k]:.0f} MB" for k in m if k.startswith("grid_part_"))))
    p = results.get("peer")
    if p and "skipped" not in p:
        for name in ("fgsm", "pgd_linf"):
            r = p[name]
            rows.append((f"5 peer {name}", "ART time / iqadef time", f"{r['art_over_iqadef']:.3f}",
                         f"CPU-time ratio {r['cpu_art_over_iqadef']:.3f}; max |diff| {r['max_abs_diff']:.2e}, "
                         f"{r['pixels_differing']} px differ"))
    elif p:
        rows.append(("5 peer", "skipped", "", p["skipped"]))
    r = results.get("resume")
    if r:
        rows.append(("6 resume", "resume / full run", f"{r['resume_over_full']:.3f}",
                     f"{r['resume_s']:.2f}s; model calls {sum(r['model_calls_on_resume'].values())}"))
    rp = results.get("ray_pool")
    if rp and "skipped" not in rp:
        many = rp[f"time_{rp['pool']}_actors_s"]
        rows.append(("7 ray pool", f"time(1 actor) / time({rp['pool']} actors), one metric", f"{rp['speedup']:.2f}",
                     f"{rp['time_1_actor_s']:.1f}s vs {many:.1f}s; tables equal: {rp['tables_equal']}"))
    elif rp:
        rows.append(("7 ray pool", "skipped", "", rp["skipped"]))
    g = results.get("guard")
    if g:
        rows.append(("8 guard", "unit with / without input guard", f"{g['ratio']:.3f}",
                     f"target <= {g['target']}; CPU-time ratio {g['cpu_ratio']:.3f}; minima {g['ratio_of_min']:.3f}; "
                     f"guard's own work {g['guard_share_of_unit']:.2%} of the unit ({g['fingerprints_per_unit']} "
                     f"fingerprints, uncached {g['fingerprints_share_of_unit_uncached']:.2%}; {g['unit']}); "
                     f"rows identical: {g['rows_identical']}"))
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{row[0]:<{width[0]}}  {row[1]:<{width[1]}}  {row[2]:>{width[2]}}  {row[3]}" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch intra-op threads (default: min(2, cores))")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=SECTIONS)
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    threads = B.set_threads(args.threads)
    wanted = set(args.only or SECTIONS)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "when_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "torch_threads": threads, "torch_interop_threads": torch.get_num_interop_threads(),
        "machine": B.machine(), "loadavg_start": B.loadavg(), "settings": cfg,
    }
    with tempfile.TemporaryDirectory(prefix="iqadef-bench-") as tmp:
        workdir = Path(tmp)
        weights, weights_note = B.tiny_iqa_weights(workdir)
        results["metric"] = {"name": "tiny-iqa", "weights": weights_note}
        metric = B.load_metric(weights)
        images_dir = workdir / "images"
        paths = B.synthetic_images(images_dir, max(max(cfg["batch_sizes"]), cfg["batch"]), cfg["size"])
        x = B.load_batch(paths[: cfg["batch"]])
        grid_dir = workdir / "grid_images"
        B.synthetic_images(grid_dir, cfg["grid_images"], cfg["size"], seed=1)
        pool_dir = workdir / "pool_images"
        B.synthetic_images(pool_dir, cfg["pool_images"], cfg["size"], seed=2)
        steps = [("overhead", lambda: bench_overhead(metric, x, cfg)),
                 ("overhead_paper_size", lambda: bench_overhead_paper_size(workdir, x, cfg)),
                 ("sharing", lambda: bench_sharing(workdir, grid_dir, weights, metric, cfg)),
                 ("batching", lambda: bench_batching(metric, paths, cfg)),
                 ("memory", lambda: bench_memory(workdir, weights, cfg)),
                 ("peer", lambda: bench_peer(metric, x, cfg)),
                 ("resume", lambda: bench_resume(workdir, grid_dir, weights, cfg, results.get("sharing"))),
                 ("ray_pool", lambda: bench_ray_pool(workdir, pool_dir, weights, cfg)),
                 ("guard", lambda: bench_guard(workdir, cfg))]
        for name, fn in steps:
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            results[name] = fn()
            results[name]["loadavg_after"] = B.loadavg()
            results[name]["section_s"] = time.perf_counter() - t0
            print(f"[{name}] done in {results[name]['section_s']:.1f}s", file=sys.stderr, flush=True)
    results["loadavg_end"] = B.loadavg()
    results["total_s"] = time.perf_counter() - started
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    results["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in usage)  # work done, whatever the load
    summary_line = (f"{results['total_s']:.0f}s ({results['cpu_s']:.0f} CPU-s), torch threads {threads}, "
                    f"load {results['loadavg_start']} -> {results['loadavg_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and args.out.is_file():  # re-measured sections replace theirs in the existing file
        previous = json.loads(args.out.read_text())
        previous.setdefault("reruns", []).append({k: results[k] for k in ("when_utc", "loadavg_start", "total_s",
                                                                          "cpu_s")}
                                                 | {"sections": sorted(wanted)})
        results = previous | {k: results[k] for k in wanted}
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\n{summary_line}; written {args.out}")
    return results


if __name__ == "__main__":
    main()
