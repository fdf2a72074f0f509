"""The same grid over 14, 56 and 224 images: time linear in the images, peak memory flat; and Ray with 2
actors against the local executor on one small grid: identical tables (issue 16, target 5).

    python benchmarks/scale.py                    # writes benchmarks/results/scale.json
    python benchmarks/scale.py --sizes 14 56      # fewer sizes
    python benchmarks/scale.py --quick            # 2 and 4 images, a 2-defence grid: a smoke run
    python benchmarks/scale.py --skip-ray

Images: the 14 bundled 256x256 images, and deterministic variants of them (horizontal and vertical flips,
a circular shift by (37, 53) pixels, a 232x232 crop at (12, 8) resized back to 256x256: 16 combinations),
written as PNGs to a temporary folder; every variant is a distinct file.

The grid is reduced (the default grid's 10 attacks x 16 defences at 224 images would take ~40 minutes
here): ``tiny-iqa`` x {I-FGSM (10 steps), FGSM} x {no-defence, jpeg[quality=50], median-blur,
gaussian-blur, fcn}, batch 7, as ``iqadef run`` runs it. Each size runs in a fresh process (this script
with ``--child``): wall and CPU time, seconds per cell, and the peak RSS of the grid alone (the kernel's
high-water mark, reset after the imports through /proc/self/clear_refs; ``ru_maxrss`` where that is not
possible). Linearity: the seconds per image at each size over those at the smallest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ATTACKS: list[Any] = ["fgsm", "ifgsm"]
DEFENCES: list[Any] = ["no-defence", {"name": "jpeg", "quality": 50}, "median-blur", "gaussian-blur", "fcn"]
QUICK_ATTACKS: list[Any] = ["fgsm"]
QUICK_DEFENCES: list[Any] = ["no-defence", "flip"]
RAY_ATTACKS: list[Any] = ["fgsm", {"name": "ifgsm", "iters": 2}]
RAY_DEFENCES: list[Any] = ["no-defence", {"name": "jpeg", "quality": 50}, "median-blur"]


def augmented_images(folder: Path, count: int) -> list[Path]:
    """``count`` PNGs: the bundled images, then their variants (flips, shift, crop), in a fixed order."""
    import numpy as np
    from PIL import Image

    from iqadef.core.dataset import builtin_images_dir

    sources = sorted(builtin_images_dir().glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(16):
        for src in sources:
            if len(paths) == count:
                return paths
            with Image.open(src) as img:
                img = img.convert("RGB")
                size = img.size
                if k & 8:
                    img = img.crop((12, 8, 12 + 232, 8 + 232)).resize(size, Image.Resampling.BICUBIC)
                arr = np.asarray(img)
            if k & 1:
                arr = arr[:, ::-1]
            if k & 2:
                arr = arr[::-1]
            if k & 4:
                arr = np.roll(arr, (37, 53), axis=(0, 1))
            path = folder / f"{src.stem}_v{k:02d}.png"
            Image.fromarray(np.ascontiguousarray(arr)).save(path)
            paths.append(path)
    if len(paths) < count:
        raise SystemExit(f"at most {16 * len(sources)} distinct images; asked for {count}")
    return paths


def grid(images: Path, output: Path, attacks: list, defences: list, batch: int, executor: str = "local",
         ray: dict | None = None):
    from iqadef.core.plugins import installed_plugins
    from iqadef.config.registry import parse_run_config

    data = {"dataset": {"images": str(images)}, "output": str(output), "device": "cpu", "batch_size": batch,
            "seed": 0, "examples": 2, "metrics": ["tiny-iqa"], "attacks": attacks, "defences": defences,
            "executor": executor}
    if ray:
        data["ray"] = ray
    return parse_run_config(data, output.parent / "scale.yaml", plugins=installed_plugins())


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(images: Path, output: Path, threads: int, quick: bool) -> dict[str, Any]:
    """One grid in this (fresh) process: time and memory of the grid alone."""
    import torch

    torch.set_num_threads(threads)
    import pandas  # noqa: F401 - imported before the peak is reset: the runner imports them anyway
    import pyarrow  # noqa: F401

    from iqadef.report import write_report
    from iqadef.execute import run_grid

    config = grid(images, output, QUICK_ATTACKS if quick else ATTACKS, QUICK_DEFENCES if quick else DEFENCES,
                  2 if quick else 7)
    rss_before = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    trace: list[float] = []
    start, start_cpu = time.perf_counter(), time.process_time()
    summary = run_grid(config, fresh=True, progress=False,
                       after_unit=lambda n: trace.append(round(_status_mb("VmRSS") or float("nan"), 1)))
    grid_s = time.perf_counter() - start
    write_report(summary.run_dir)
    total_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    peak = _status_mb("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cells": summary.total, "failed": summary.failed, "grid_s": grid_s, "total_s": total_s, "cpu_s": cpu_s,
            "peak_rss_mb": peak, "peak_is_grid_only": reset, "rss_before_grid_mb": rss_before,
            "rss_after_units_mb": trace, "loadavg_end": os.getloadavg()}


def run_size(folder: Path, n: int, threads: int, quick: bool) -> dict[str, Any]:
    """One size in a fresh process (this script with ``--child``)."""
    images = folder / f"images_{n}"
    augmented_images(images, n)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(images), str(folder / f"run_{n}"),
           str(threads), "--attacks", str(len(ATTACKS)), "--defences", str(len(DEFENCES))] + (["--quick"] if quick else [])
    load = os.getloadavg()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {n}-image grid failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(images=n, loadavg_start=load)
    return result


def ray_vs_local(folder: Path, n: int, threads: int, quick: bool) -> dict[str, Any]:
    """The same small grid locally and on a local Ray instance with 2 actors: the tables must be identical."""
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not installed (pip install iqadef[ray])"}
    import pandas as pd
    import torch

    from iqadef.execute import run_grid

    torch.set_num_threads(threads)
    images = folder / f"images_{n}"
    augmented_images(images, n)
    attacks, defences = (QUICK_ATTACKS, QUICK_DEFENCES) if quick else (RAY_ATTACKS, RAY_DEFENCES)
    configs = {"local": grid(images, folder / "ray_local", attacks, defences, 2),
               "ray": grid(images, folder / "ray_2_actors", attacks, defences, 2, executor="ray",
                           ray={"local_cpus": 2, "num_cpus": 1, "actors_per_metric": 2, "torch_threads": threads})}
    seconds = {}
    try:
        for name, config in configs.items():
            start = time.perf_counter()
            summary = run_grid(config, fresh=True, progress=False)
            seconds[name] = time.perf_counter() - start
            if summary.failed:
                raise RuntimeError(f"{name}: {summary.failed} cells failed")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    tables = {name: pd.read_parquet(c.output / "results.parquet") for name, c in configs.items()}
    ident = ["metric_key", "attack_key", "defence_key", "image"]
    a, b = (tables[k].sort_values(ident).reset_index(drop=True) for k in ("local", "ray"))
    skip = {"unit", "image_path", "adv_path", "example_path", "checksum"}  # where the run folder is
    values = [c for c in a.columns if c not in skip]
    numeric = [c for c in values if pd.api.types.is_float_dtype(a[c])]
    max_diff = max((float((a[c] - b[c]).abs().max()) for c in numeric), default=0.0) if len(a) == len(b) else None
    identical = len(a) == len(b) and a[values].equals(b[values])
    return {"images": n, "cells": len(a), "attacks": [str(x) for x in attacks], "defences": [str(x) for x in defences],
            "seconds": seconds, "tables_identical": bool(identical), "value_columns_compared": len(values),
            "max_abs_diff": max_diff, "actors": 2}


def main(argv: list[str] | None = None) -> int:
    global ATTACKS, DEFENCES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="image counts (default 14 56 224)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--ray-images", type=int, default=14)
    parser.add_argument("--attacks", type=int, default=len(ATTACKS), help="use the first N attacks of the grid")
    parser.add_argument("--defences", type=int, default=len(DEFENCES), help="use the first N defences of the grid")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("IMAGES", "OUTPUT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ATTACKS, DEFENCES = ATTACKS[: args.attacks], DEFENCES[: args.defences]
    if args.child:
        images, output, threads = args.child
        print(json.dumps(child(Path(images), Path(output), int(threads), args.quick)))
        return 0
    sizes = args.sizes or ([2, 4] if args.quick else [14, 56, 224])
    out = args.out or HERE / "results" / ("scale_quick.json" if args.quick else "scale.json")
    import torch

    result: dict[str, Any] = {
        "benchmark": "scale", "quick": args.quick,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": args.threads},
        "grid": {"metric": "tiny-iqa", "attacks": [str(a) for a in (QUICK_ATTACKS if args.quick else ATTACKS)],
                 "defences": [str(d) for d in (QUICK_DEFENCES if args.quick else DEFENCES)],
                 "batch_size": 2 if args.quick else 7},
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="iqadef-scale-") as tmp:
        folder = Path(tmp)
        for n in sizes:
            r = run_size(folder, n, args.threads, args.quick)
            result["sizes"][str(n)] = r
            print(f"{n:4d} images: {r['cells']} cells, grid {r['grid_s']:.1f} s (CPU {r['cpu_s']:.1f} s), "
                  f"{r['grid_s'] / n:.2f} s/image, peak RSS {r['peak_rss_mb']:.0f} MB; load {r['loadavg_start'][0]:.1f}",
                  flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        first = result["sizes"][str(sizes[0])]
        result["linearity"] = {
            str(n): {"wall_per_image_vs_smallest": (r["grid_s"] / n) / (first["grid_s"] / sizes[0]),
                     "cpu_per_image_vs_smallest": (r["cpu_s"] / n) / (first["cpu_s"] / sizes[0]),
                     "peak_rss_vs_smallest": r["peak_rss_mb"] / first["peak_rss_mb"]}
            for n, r in ((int(k), v) for k, v in result["sizes"].items())}
        if not args.skip_ray:
            result["ray_vs_local"] = ray_vs_local(folder, 2 if args.quick else args.ray_images, args.threads, args.quick)
            print(f"ray (2 actors) vs local: {result['ray_vs_local']}", flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
