"""SSIM of one unit's pairs: per pair (``_measures.ssim``, before) against moments shared between pairs
(``_measures.ssim_pairs``, what the grid uses now): time ratio and the largest difference (issue 27, item 2).

    python benchmarks/ssim_shared.py                 # writes benchmarks/results/ssim_shared.json
    python benchmarks/ssim_shared.py --rounds 3

The unit is the default grid's: 7 bundled 256x256 images, x_a = I-FGSM on tiny-iqa (10 steps, 8-bit
quantised as stored), and D(x), D(x_a) of the default registry's 16 defences (registry.yaml). Its pairs as the
worker measures them: x vs x_a once, then x vs D(x_a), x_a vs D(x_a), D(x) vs D(x_a) per defence (x vs D(x) is
memoised across attacks, so it is counted once per defence too here, as for the first attack of a batch).
Both variants run interleaved in one process (median of the per-round ratios; CPU time as well: the machine is
shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def unit_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    from iqadef.core.dataset import Dataset
    from iqadef.config.registry import load_run_config
    from iqadef.store.artifacts import quantize
    from iqadef.plugins.scores._measures import match_size

    config = load_run_config(ROOT / "registry.yaml")
    dataset = Dataset(config.images, config.mos, max_side=config.max_side)
    x = dataset.load(dataset.batches(7)[0])
    metric = config.metrics[0].load("cpu")
    attack = next(a for a in config.attacks if a.attack.name == "ifgsm").attack.load("cpu")
    xa = quantize(attack.run(metric, x.clone(), seed=0).detach())
    pairs = [(x, xa)]
    for entry in config.defences:
        defence = entry.load("cpu")
        with torch.no_grad():
            dx, dxa = defence.purify(x, seed=1), defence.purify(xa, seed=1)
        dxa_x = match_size(dxa, x)
        pairs += [(x, match_size(dx, x)), (x, dxa_x), (xa, dxa_x), (dx, match_size(dxa, dx))]
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ssim_shared.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from iqadef.plugins.scores._measures import ssim, ssim_pairs

    load = [os.getloadavg()]
    pairs = unit_pairs()
    variants = {"per_pair": lambda: [ssim(a, b) for a, b in pairs], "shared": lambda: ssim_pairs(pairs)}
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    values = {}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            start, start_cpu = time.perf_counter(), time.process_time()
            values[name] = variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    diff = max(float((a - b).abs().max()) for a, b in zip(values["per_pair"], values["shared"]))
    load.append(os.getloadavg())
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg_before_after": load,
              "threads": args.threads, "pairs": len(pairs), "images_per_pair": int(pairs[0][0].shape[0]),
              "wall_s": wall, "cpu_s": cpu,
              "shared_over_per_pair_wall_median": statistics.median(s / p for s, p in zip(wall["shared"], wall["per_pair"])),
              "shared_over_per_pair_cpu_median": statistics.median(s / p for s, p in zip(cpu["shared"], cpu["per_pair"])),
              "max_abs_diff": diff}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("wall_s", "cpu_s")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
