"""Runs one grid in a fresh process and prints its memory figures as JSON (run_all.py's memory figure).

Usage: python benchmarks/grid_child.py IMAGES OUTPUT THREADS BATCH [WEIGHTS]

A fresh process per grid, so the figures belong to that grid alone. The peak is the kernel's
high-water mark (VmHWM) reset just before the grid starts (``/proc/self/clear_refs``), so the
import-time peak of torch and the plugins is not counted; the RSS after every work unit is
recorded too, which shows whether memory grows with the number of images.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import grid_config, set_threads  # noqa: E402


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _errors(output: Path) -> list[str]:
    import pandas as pd

    df = pd.read_csv(output / "results.csv")
    return sorted(set(df.loc[df["status"] != "ok", "error"].astype(str)))[:3]


def main(argv: list[str]) -> None:
    images, output, threads, batch = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    weights = Path(argv[4]) if len(argv) > 4 and argv[4] else None
    set_threads(threads)
    import pandas  # noqa: F401 - imported before the peak is reset, as the runner imports it anyway
    import pyarrow  # noqa: F401

    from iqadef.execute import run_grid

    config = grid_config(images, output, weights, attacks=["fgsm"], defences=["no-defence"], batch_size=batch)
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak()
    trace: list[float] = []
    start = time.perf_counter()
    summary = run_grid(config, fresh=True, progress=False,
                       after_unit=lambda n: trace.append(_status_mb("VmRSS") or float("nan")))
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; includes imports
    print(json.dumps({"peak_rss_mb": peak, "peak_is_grid_only": reset, "rss_before_grid_mb": rss_before,
                      "rss_after_each_unit_mb": [round(v, 1) for v in trace], "seconds": seconds,
                      "cells": summary.total, "failed": summary.failed, "errors": _errors(output)}))


if __name__ == "__main__":
    main(sys.argv[1:])
