"""Cost of certified defences against n (docs/certified.md): every built-in smoothing of the embedded metric.

(fs-iqa: sigma 0.25 in feature units, eps 1e-9; its Lipschitz bound is timed once, apart, with its tightness.)

    python benchmarks/smoothing.py [--quick] [--threads 2] [--device cpu] [--out benchmarks/results/smoothing.json]
    python benchmarks/smoothing.py --method all      # ms dms rs drs ddrs densepure: results/smoothing_methods.json

A smoothed score costs n metric forwards per image (rs, drs, ddrs, densepure: n0 = n/10 selection copies on top;
dms and drs: a denoiser forward per copy; ddrs: a diffusion UNet forward per copy; densepure: 2). For each n (and
each noise batch, the copies per forward) this times ``smooth`` on a batch of images and the plain metric on the
same batch, interleaved and repeated (median), and reports seconds per image and the ratio to one plain forward.
Median smoothing also records the certified interval's median width at each n (more samples, tighter order
statistics). The denoisers have random weights (timings do not depend on them); on a CPU ddrs and densepure use a
small guided-diffusion UNet (``--unet small``: 32 channels, 2 levels) instead of the 553M-parameter 256x256 one
(``--unet guided-256``, hours on a CPU at these n; benchmarks/gpu.py times that one on CUDA).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import (interleaved, load_batch, load_metric, machine, med, set_threads,  # noqa: E402
                    synthetic_images, tiny_iqa_weights, write_result)


#: The built-in certified defences, by the short names of docs/performance.md.
METHODS = ("ms", "dms", "rs", "drs", "ddrs", "densepure", "fs-iqa")
UNETS = {"small": "guided-diffusion UNet, 32 channels, channel_mult (1, 2), attention at 8 px, random weights",
         "guided-256": "the 553M-parameter guided-diffusion ImageNet 256x256 UNet, random weights"}
SIGMA = 0.1


def diffusion_model(work: Path, unet: str) -> dict:
    """``model``/``weights_path`` of ddrs and densepure: a random checkpoint of the chosen UNet, registered under
    a model name of its own (as the tests register their tiny one)."""
    from iqadef.core.weights import WeightSpec
    from iqadef.plugins.defences import diffpure
    from iqadef.plugins.defences._guided_diffusion import IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig

    config = IMAGENET_256_UNCOND if unet == "guided-256" else GuidedUNetConfig(
        image_size=64, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(8,),
        num_head_channels=16)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.02 for k, v in GuidedUNet(config).state_dict().items()}
    path = work / "unet.pt"
    torch.save(state, path)
    diffpure.GUIDED_MODELS["bench-unet"] = diffpure.GuidedModel(config, WeightSpec(path.name, ()))
    return {"model": "bench-unet", "weights_path": str(path)}


def denoiser(work: Path, sigma: float) -> str:
    """A dms-iqa / drs denoiser checkpoint (``iqadef train-dms``'s layout) for ``sigma``, random weights."""
    from iqadef.plugins.certified.dms_iqa import Denoiser

    torch.manual_seed(0)
    net = Denoiser()
    path = work / f"denoiser_{sigma:g}.pt"
    torch.save({"model": net.state_dict(), "sigma": sigma, "width": net.width, "depth": net.depth}, path)
    return str(path)


def build(method: str, n: int, batch: int, work: Path, model: dict):
    """The smoothing ``method`` at ``n`` (radius kinds: ``n0 = n/10`` selection copies on top), sigma 0.1."""
    from iqadef.plugins.certified.ddrs import DiffusionDenoisedSmoothing
    from iqadef.plugins.certified.densepure import DensePure
    from iqadef.plugins.certified.dms_iqa import DMSIQA
    from iqadef.plugins.certified.drs import DenoisedRandomizedSmoothing
    from iqadef.plugins.certified.fs_iqa import FeatureSmoothing
    from iqadef.plugins.certified.median_smoothing import MedianSmoothing
    from iqadef.plugins.certified.rs import RandomizedSmoothing

    common = {"n": n, "batch": batch, "sigma": SIGMA, "eps": 0.1, "alpha": 0.001}
    binned = {**common, "n0": max(1, n // 10)}
    if method == "ms":
        return MedianSmoothing(**common)
    if method == "dms":
        return DMSIQA(**common, weights_path=denoiser(work, SIGMA))
    if method == "rs":
        return RandomizedSmoothing(**binned)
    if method == "drs":
        return DenoisedRandomizedSmoothing(**binned, weights_path=denoiser(work, SIGMA))
    if method == "ddrs":
        return DiffusionDenoisedSmoothing(**binned, **model)
    if method == "fs-iqa":  # noise in feature units; eps where tiny-iqa's bound still gives finite intervals
        return FeatureSmoothing(**{**common, "sigma": 0.25, "eps": 1e-9})
    return DensePure(**binned, **model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; figures mean little)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("median", *METHODS, "all"), default="median",
                        help="median (= ms) smoothing, or another built-in; all: every one of " + ", ".join(METHODS))
    parser.add_argument("--unet", choices=("small", "guided-256"), default="small",
                        help="the diffusion UNet of ddrs and densepure (random weights)")
    parser.add_argument("--ns", type=int, nargs="+", help="values of n (default 8 32 128 512)")
    parser.add_argument("--batches", type=int, nargs="+", help="noise batches (default 1 8 32 128)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    methods = METHODS if args.method == "all" else ("ms" if args.method == "median" else args.method,)
    if args.out is None:
        name = {"median": "smoothing.json", "all": "smoothing_methods.json"}.get(args.method,
                                                                              f"smoothing_{args.method.replace('-', '_')}.json")
        args.out = Path(__file__).parent / "results" / name

    threads = set_threads(args.threads)
    if args.method == "all":  # n against cost for each method at one noise batch
        ns, batches = ((4,), (8,)) if args.quick else ((8, 32, 128), (32,))
    else:
        ns, batches = ((4, 8), (1, 8)) if args.quick else ((8, 32, 128, 512), (1, 8, 32, 128))
    ns, batches = tuple(args.ns or ns), tuple(args.batches or batches)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights, weights_note = tiny_iqa_weights(work)
        metric = load_metric(weights, args.device)
        x = load_batch(synthetic_images(work / "img", args.images, args.size)).to(args.device)

        def plain():
            with torch.no_grad():
                out = metric.score(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            return out

        model = diffusion_model(work, args.unet) if {"ddrs", "densepure"} & set(methods) else {}
        lipschitz: dict = {}
        if "fs-iqa" in methods:  # fs-iqa's bound is computed once per image size (cached): timed apart
            from iqadef import jacobian_norm

            start = time.perf_counter()
            split = metric.feature_split(tuple(x.shape[-2:]))
            lipschitz = {"lipschitz_bound": split.lipschitz, "lipschitz_seconds": time.perf_counter() - start,
                         "lipschitz_lower": max(jacobian_norm(split.backbone, x[i:i + 1], iters=10)
                                                for i in range(x.shape[0]))}
            lipschitz["bound_over_lower"] = lipschitz["lipschitz_bound"] / lipschitz["lipschitz_lower"]
            print(json.dumps(lipschitz), flush=True)
        rows = []
        for method, n, batch in itertools.product(methods, ns, batches):
            if batch > n * args.images or (batch == 1 and n > 32):  # one copy per forward: only small n
                continue
            smoothing = build(method, n, batch, work, model).load(args.device)
            outputs: dict = {}
            times = interleaved({"plain": plain, "smoothed": lambda s=smoothing: s.smooth(metric, x, seed=0)},
                                repeats, warmup=1, outputs=outputs)
            out = outputs["smoothed"]
            width = (out.upper - out.lower).float()
            extra = ({"forwards_per_image": smoothing.samples_per_image(),
                      "median_radius": float(out.radius.float().median()),
                      "abstained": int((out.bin < 0).sum())} if out.bin is not None else
                     {"forwards_per_image": smoothing.samples_per_image()})
            rows.append({"method": method, "n": n, "batch": batch,
                         "seconds_per_image": med(times["smoothed"]) / args.images,
                         "plain_seconds_per_image": med(times["plain"]) / args.images,
                         "ratio_to_plain": med(times["smoothed"]) / med(times["plain"]),
                         "median_width": float(width.median()) if torch.isfinite(width).all() else None,
                         **extra})
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "smoothing", "method": args.method, "methods": list(methods),
              "unet": None if not {"ddrs", "densepure"} & set(methods) else UNETS[args.unet],
              "metric": "tiny-iqa", "weights": weights_note, "device": args.device,
              "threads": threads, "images": args.images, "size": args.size, "repeats": repeats, "quick": args.quick,
              "sigma": SIGMA, "eps": 0.1, "alpha": 0.001, "fs_iqa": lipschitz or None, "machine": machine(),
              "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
