"""Adaptive attacks against their floor: attack time / (steps x the floor of one step), EOT draws stacked or not.

    python benchmarks/adaptive_floor.py [--quick] [--threads 2] [--size 128] [--steps 5] [--samples 8]
                                        [--out benchmarks/results/adaptive_floor.json]

For each defence (``random-rotate``: randomised and differentiable; ``jpeg``: BPDA) the attacker's target is
``DefendedMetric(tiny-iqa, D, samples=K)``. The floor of one gradient step is what no runner can avoid: the K
draws of ``D.forward`` on the batch, one forward and backward of the metric on the stacked ``B*K`` images, and
the gradient back to the images, written here in plain torch. The floor of one query (a black-box step) is the
same without the backward pass. Timed, interleaved and repeated (median):

* ``floor_step`` x steps, ``floor_query`` x steps;
* ``ifgsm`` through ``DefendedMetric`` with the draws stacked (iqadef's default) and with one metric call per
  draw (``stack=False``, the way before): ratio to ``steps x floor_step``;
* ``apgd`` (``steps`` steps: ``steps + 1`` gradients with its random start): ratio to ``(steps + 1) x floor_step``;
* ``square-attack`` with ``queries = steps`` through a ``QueryMetric``: ratio to ``steps x floor_query``.

A deterministic defence (jpeg) is drawn once whatever K (DefendedMetric's rule), so its floor has B images.
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
from _bench import (interleaved, load_batch, load_metric, loadavg, machine, med, set_threads,  # noqa: E402
                    synthetic_images, tiny_iqa_weights, write_result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; figures mean little)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=7)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--defences", nargs="+", default=["random-rotate", "jpeg"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adaptive_floor.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.steps, args.samples, args.repeats = 2, 32, 2, 2, 1

    from iqadef.core.adaptive import DefendedMetric, eot_seed
    from iqadef.core.plugins import InstalledPlugins
    from iqadef.core.query import QueryMetric

    threads = set_threads(args.threads)
    plugins = InstalledPlugins()
    started, load_start = time.time(), loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights, weights_note = tiny_iqa_weights(work)
        metric = load_metric(weights)
        x = load_batch(synthetic_images(work / "img", args.images, args.size))
        ifgsm = plugins.get("attacks", "ifgsm")(iters=args.steps)
        apgd = plugins.get("attacks", "apgd")(steps=args.steps)
        square = plugins.get("attacks", "square-attack")(queries=args.steps, eps=8 / 255)
        for name in args.defences:
            defence = plugins.get("defences", name)().load("cpu")
            k = args.samples if defence.randomized else 1
            seeds = [eot_seed(0, i) if defence.randomized else None for i in range(k)]

            def floor_step(defence=defence, seeds=seeds):
                images = x.clone().requires_grad_(True)
                draws = torch.cat([defence.forward(images, seed=s) for s in seeds])
                value = metric.score(draws).view(len(seeds), -1).mean(dim=0)
                return torch.autograd.grad(value.sum(), images)[0]

            def floor_query(defence=defence, seeds=seeds):
                with torch.no_grad():
                    draws = torch.cat([defence.forward(x, seed=s) for s in seeds])
                    return metric.score(draws).view(len(seeds), -1).mean(dim=0)

            def target(stack=True, defence=defence):
                return DefendedMetric(metric, defence, samples=args.samples, seed=0, stack=stack)

            candidates = {
                "floor_step": lambda f=floor_step: [f() for _ in range(args.steps)],
                "floor_query": lambda f=floor_query: [f() for _ in range(args.steps)],
                "ifgsm_stacked": lambda t=target: ifgsm.run(t(True), x, seed=0),
                "ifgsm_per_draw": lambda t=target: ifgsm.run(t(False), x, seed=0),
                "apgd_stacked": lambda t=target: apgd.run(t(True), x, seed=0),
                "square_stacked": lambda t=target: square.run(QueryMetric(t(True), x.shape[0]), x, seed=0),
            }
            times = interleaved(candidates, args.repeats, warmup=1)
            step, query = med(times["floor_step"]) / args.steps, med(times["floor_query"]) / args.steps
            row = {
                "defence": name, "eot_samples": k, "floor_step_s": step, "floor_query_s": query,
                "ifgsm_over_floor": med(times["ifgsm_stacked"]) / (args.steps * step),
                "ifgsm_per_draw_over_floor": med(times["ifgsm_per_draw"]) / (args.steps * step),
                "apgd_over_floor": med(times["apgd_stacked"]) / ((args.steps + 1) * step),
                "square_over_floor": med(times["square_stacked"]) / (args.steps * query),
                "seconds": {n: med(v) for n, v in times.items()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"benchmark": "adaptive_floor", "metric": "tiny-iqa", "weights": weights_note, "threads": threads,
              "images": args.images, "size": args.size, "steps": args.steps, "samples": args.samples,
              "repeats": args.repeats, "quick": args.quick, "goal_ratio": 1.10,
              "loadavg_start": load_start, "loadavg_end": loadavg(), "wall_s": round(time.time() - started, 1),
              "machine": machine(), "rows": rows}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
