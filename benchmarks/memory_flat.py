"""Peak memory of a grid against the number of images: flat once nothing is kept per unit (issue 27, item 3).

    python benchmarks/memory_flat.py                          # 14 and 224 images, 3 runs each
    python benchmarks/memory_flat.py --base /tmp/base/src     # the same with another checkout, interleaved
    python benchmarks/memory_flat.py --sizes 14 112 --runs 1  # quicker

A small grid (``tiny-iqa`` x FGSM x {no-defence, jpeg[quality=50], median-blur}, batch 7: the defences are
computed together, as in the default grid) over the images of ``benchmarks/scale.py`` (the 14 bundled ones
and their variants), each run in a fresh process (``--child``). Recorded per run: RSS after the imports, the
peak of the grid alone (the kernel's high-water mark reset after the imports through /proc/self/clear_refs),
RSS after each unit, and the peak of ``write_report`` (reset again). The figure: the median grid peak above
the imports at the largest size over the one at the smallest (goal <= 1.05). Linux only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ATTACKS = ["fgsm"]
DEFENCES = ["no-defence", {"name": "jpeg", "quality": 50}, "median-blur"]


def child(images: Path, output: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    import pandas  # noqa: F401 - imported before the peak is reset: the runner imports them anyway
    import pyarrow  # noqa: F401

    sys.path.insert(0, str(HERE))
    import scale

    from iqadef.report import write_report
    from iqadef.execute import run_grid

    config = scale.grid(images, output, ATTACKS, DEFENCES, 7)
    before = scale._status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    trace: list[float] = []
    summary = run_grid(config, fresh=True, progress=False,
                       after_unit=lambda n: trace.append(round(scale._status_mb("VmRSS"), 1)))
    grid_peak = scale._status_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    write_report(summary.run_dir)
    report_peak = scale._status_mb("VmHWM")
    return {"cells": summary.total, "failed": summary.failed, "rss_after_imports_mb": before,
            "grid_peak_mb": grid_peak, "grid_peak_above_imports_mb": grid_peak - before,
            "report_peak_mb": report_peak, "rss_after_units_mb": trace}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[14, 224])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", help="PYTHONPATH of another checkout (its src folder), run interleaved")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "memory_flat.json")
    ap.add_argument("--child", nargs=2, metavar=("IMAGES", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return 0
    sys.path.insert(0, str(HERE))
    import scale

    variants = {"this": str(ROOT / "src")} | ({"base": args.base} if args.base else {})
    runs: dict[str, dict[int, list[dict]]] = {v: {n: [] for n in args.sizes} for v in variants}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="iqadef-memory-") as tmp:
        for n in args.sizes:
            scale.augmented_images(Path(tmp) / f"images_{n}", n)
        for r in range(args.runs):
            for n in args.sizes:
                for name, src in variants.items():
                    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "IQADEF_LOAD_PLUGINS": ""}
                    done = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / f"images_{n}"),
                                           str(Path(tmp) / f"run_{name}_{n}_{r}")], capture_output=True, text=True,
                                          env=env, check=False)
                    if done.returncode != 0:
                        raise SystemExit(f"{name}, {n} images: {done.stderr[-2000:]}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    runs[name][n].append(row)
                    print(f"run {r} {name} {n} images: grid peak above imports {row['grid_peak_above_imports_mb']:.0f} MB, "
                          f"report peak {row['report_peak_mb']:.0f} MB", flush=True)
    load.append(os.getloadavg())
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg_before_after": load,
              "grid": {"metric": "tiny-iqa", "attacks": ATTACKS, "defences": [str(d) for d in DEFENCES], "batch": 7},
              "goal_ratio": 1.05, "variants": {}}
    lo, hi = min(args.sizes), max(args.sizes)
    for name, by_size in runs.items():
        med = {n: statistics.median(r["grid_peak_above_imports_mb"] for r in rows) for n, rows in by_size.items()}
        result["variants"][name] = {"median_grid_peak_above_imports_mb": med,
                                    "ratio_largest_to_smallest": med[hi] / med[lo], "runs": by_size}
        print(f"{name}: median grid peak above imports {med}, ratio {hi}/{lo}: {med[hi] / med[lo]:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
