"""The per-cell measures of one unit of the default grid: this checkout's ``measure_batches`` against a git
revision's, interleaved in one process (CPU time: the machine is shared), and the largest difference of the
25 stored columns.

    python benchmarks/measures_unit.py --before 1744bba      # writes benchmarks/results/measures_unit.json

The unit is ``ssim_shared.unit_pairs``'s (7 bundled 256x256 images, x_a from I-FGSM on tiny-iqa, the 16
default defences), as the worker hands it to the scores: one ``CellGroup`` of 16 cell batches sharing x, x_a
and one memo, so the first defence's ``full-reference`` call measures every pair of the unit (65 pairs: the
first attack of a batch). Each round runs both variants in a fresh memo, in alternating order.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import module_at  # noqa: E402


def old_module(rev: str):
    return module_at(rev)


def unit_images():
    """x, x_a and (D(x), D(x_a)) of each default defence, as ``ssim_shared.unit_pairs`` builds them."""
    from iqadef.config.registry import load_run_config
    from iqadef.core.dataset import Dataset
    from iqadef.store.artifacts import quantize

    config = load_run_config(HERE.parent / "registry.yaml")
    dataset = Dataset(config.images, config.mos, max_side=config.max_side)
    x = dataset.load(dataset.batches(7)[0])
    metric = config.metrics[0].load("cpu")
    attack = next(a for a in config.attacks if a.attack.name == "ifgsm").attack.load("cpu")
    xa = quantize(attack.run(metric, x.clone(), seed=0).detach())
    defended = []
    for entry in config.defences:
        defence = entry.load("cpu")
        with torch.no_grad():
            defended.append((defence.purify(x, seed=1), defence.purify(xa, seed=1)))
    return metric, x, xa, defended


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="1744bba", help="git revision of the code compared with this checkout's")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "measures_unit.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from iqadef.core.cells import CellBatch, CellGroup
    from iqadef.plugins.scores import _measures as new

    old = old_module(args.before)
    load = [os.getloadavg()]
    metric, x, xa, defended = unit_images()
    f = torch.zeros(x.shape[0])

    def run(module):
        memo: dict = {}
        members = [CellBatch(x, xa, dx, dxa, f, f, f, f, metric, memo) for dx, dxa in defended]
        CellGroup(members)
        start = time.thread_time()
        with torch.no_grad():
            columns = module.measure_batches(members)
        return time.thread_time() - start, columns

    variants = {"before": old, "after": new}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    values = {}
    run(new)  # warm-up
    for r in range(args.rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            seconds, values[name] = run(variants[name])
            cpu[name].append(seconds)
    diffs: dict[str, float] = {}
    for before, after in zip(values["before"], values["after"]):
        for column, value in before.items():
            finite = torch.isfinite(value)
            assert torch.equal(finite, torch.isfinite(after[column])), column
            d = float((after[column][finite] - value[finite]).abs().max()) if finite.any() else 0.0
            rel = float(((after[column][finite] - value[finite]).abs() / value[finite].abs().clamp_min(1e-300)).max()) \
                if finite.any() else 0.0
            kind = column.split("_")[0]
            diffs[kind] = max(diffs.get(kind, 0.0), d)
            diffs[kind + "_rel"] = max(diffs.get(kind + "_rel", 0.0), rel)
    load.append(os.getloadavg())
    result = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg_before_after": load,
        "before_rev": args.before, "threads": args.threads, "rounds": args.rounds, "cpu_s": cpu,
        "cpu_s_median": {k: statistics.median(v) for k, v in cpu.items()},
        "after_over_before_cpu_median": statistics.median(a / b for a, b in zip(cpu["after"], cpu["before"])),
        "max_abs_diff_by_measure": diffs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_s"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
