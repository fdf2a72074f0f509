"""Cost of certified defences against n (docs/certified.md): median smoothing, rs or fs-iqa of the embedded metric.

    python benchmarks/smoothing.py [--quick] [--threads 2] [--device cpu] [--out benchmarks/results/smoothing.json]

A smoothed score costs n metric forwards per image. For each n (and each noise batch, the copies per
forward) this times ``MedianSmoothing.smooth`` on a batch of images and the plain metric on the same batch,
interleaved and repeated (median), and reports seconds per image and the ratio to one plain forward. It
also records the certified interval's median width at each n: more samples, tighter order statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import (interleaved, load_batch, load_metric, machine, med, set_threads,  # noqa: E402
                    synthetic_images, tiny_iqa_weights, write_result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; figures mean little)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("median", "rs", "fs-iqa"), default="median",
                        help="median smoothing (interval), rs (binned, radius; n0 = n/10 selection copies on top) "
                             "or fs-iqa (noise on the backbone's features: one backbone forward, n head forwards)")
    parser.add_argument("--ns", type=int, nargs="+", help="values of n (default 8 32 128 512)")
    parser.add_argument("--batches", type=int, nargs="+", help="noise batches (default 1 8 32 128)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from iqadef.core.lipschitz import jacobian_norm
    from iqadef.plugins.certified.fs_iqa import FeatureSmoothing
    from iqadef.plugins.certified.median_smoothing import MedianSmoothing
    from iqadef.plugins.certified.rs import RandomizedSmoothing

    if args.out is None:
        name = "smoothing.json" if args.method == "median" else f"smoothing_{args.method.replace('-', '_')}.json"
        args.out = Path(__file__).parent / "results" / name

    threads = set_threads(args.threads)
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

        lipschitz: dict = {}
        if args.method == "fs-iqa":  # the bound is computed once per image size (cached): timed apart
            start = time.perf_counter()
            split = metric.feature_split(tuple(x.shape[-2:]))
            lipschitz = {"lipschitz_bound": split.lipschitz, "lipschitz_seconds": time.perf_counter() - start,
                         "lipschitz_lower": max(jacobian_norm(split.backbone, x[i:i + 1], iters=10)
                                                for i in range(x.shape[0]))}
            lipschitz["bound_over_lower"] = lipschitz["lipschitz_bound"] / lipschitz["lipschitz_lower"]
            print(json.dumps(lipschitz), flush=True)
        rows = []
        for n in ns:
            for batch in batches:
                if batch > n * args.images or (batch == 1 and n > 32):  # one copy per forward: only small n
                    continue
                if args.method == "fs-iqa":
                    smoothing = FeatureSmoothing(n=n, batch=batch, sigma=0.25, eps=1e-9, alpha=0.001)
                elif args.method == "rs":
                    smoothing = RandomizedSmoothing(n=n, n0=max(1, n // 10), batch=batch, sigma=0.1, eps=0.1,
                                                    alpha=0.001)
                else:
                    smoothing = MedianSmoothing(n=n, batch=batch, sigma=0.1, eps=0.1, alpha=0.001)
                outputs: dict = {}
                times = interleaved({"plain": plain, "smoothed": lambda s=smoothing: s.smooth(metric, x, seed=0)},
                                    repeats, warmup=1, outputs=outputs)
                out = outputs["smoothed"]
                width = (out.upper - out.lower).float()
                extra = ({"forwards_per_image": smoothing.samples_per_image(),
                          "median_radius": float(out.radius.float().median()),
                          "abstained": int((out.bin < 0).sum())} if args.method == "rs" else {})
                rows.append({"n": n, "batch": batch, "seconds_per_image": med(times["smoothed"]) / args.images,
                             "plain_seconds_per_image": med(times["plain"]) / args.images,
                             "ratio_to_plain": med(times["smoothed"]) / med(times["plain"]),
                             "median_width": float(width.median()) if torch.isfinite(width).all() else None,
                             **extra})
                print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "smoothing", "method": args.method, "metric": "tiny-iqa", "weights": weights_note, "device": args.device,
              "threads": threads, "images": args.images, "size": args.size, "repeats": repeats, "quick": args.quick,
              **({"sigma": 0.25, "eps": 1e-9, **lipschitz} if args.method == "fs-iqa" else {"sigma": 0.1, "eps": 0.1}),
              "alpha": 0.001, "machine": machine(), "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
