"""Peak RSS of one unit's per-cell measures (SSIM with shared moments + MSE/MAE/L-inf of the 65 pairs of
the default grid's 16 defences) in a second thread, as the local executor runs it, under malloc settings.

    python benchmarks/measures_memory.py            # each variant in a fresh process

Variants: ``plain`` (glibc's dynamic mmap threshold), ``mmap1m`` ... ``mmap32m``
(``mallopt(M_MMAP_THRESHOLD, N MiB)`` before the measures; a fixed threshold also fixes glibc's trim threshold at
128 KiB instead of twice the dynamic mmap threshold), ``trim`` (``malloc_trim(0)`` after each pass). Records the peak above the RSS before the
measures, malloc's bytes in use and its free heap bytes after, and the CPU time. Linux with glibc only.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(variant: str, passes: int) -> dict:
    import torch

    from memory_breakdown import _malloc_mb, _status_mb
    from ssim_shared import unit_pairs

    from iqadef.plugins.scores._measures import diff_measures, ssim_pairs

    pairs = unit_pairs()
    out: dict = {}

    def work() -> None:
        if variant.startswith("mmap"):  # mmap<N>m: M_MMAP_THRESHOLD of N MiB
            ctypes.CDLL("libc.so.6").mallopt(-3, int(variant[4:-1]) << 20)
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        cpu = time.thread_time()
        for _ in range(passes):
            values = ssim_pairs(pairs)
            values += [diff_measures(a, b)["mse"] for a, b in pairs]
            del values
            if variant == "trim":
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # every free page of every arena back to the system
        out.update(cpu_s=time.thread_time() - cpu, peak_above_mb=_status_mb("VmHWM") - before,
                   rss_after_mb=_status_mb("VmRSS"), **_malloc_mb())

    torch.set_num_threads(1)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
        return 0
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "OMP_NUM_THREADS": "1"}
    rows: dict = {}
    load = [os.getloadavg()]
    for variant in sys.argv[1:] or ("plain", "mmap1m", "mmap2m", "mmap4m", "mmap32m", "trim"):
        done = subprocess.run([sys.executable, __file__, "--child", variant, "3"], capture_output=True, text=True,
                              env=env, check=True)
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, {k: round(v, 1) for k, v in rows[variant].items()}, flush=True)
    load.append(os.getloadavg())
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg_before_after": load,
              "passes": 3, "variants": rows, "cpu_count": os.cpu_count()}
    (HERE / "results" / f"measures_memory{'_' + '_'.join(sys.argv[1:]) if sys.argv[1:] else ''}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
