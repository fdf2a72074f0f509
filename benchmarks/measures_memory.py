"""Peak RSS of one unit's per-cell measures (SSIM with shared moments + MSE/MAE/L-inf of the 65 pairs of
the default grid's 16 defences) in a second thread, as the local executor runs it, under malloc settings.

    python benchmarks/measures_memory.py            # each variant in a fresh process

    python benchmarks/measures_memory.py batch per_image batch+arena2 --passes 3

A variant is ``<code>[+<malloc setting>]``. Code: ``per_image`` (default: ``_measures.pair_measures``, what the
grid runs: SSIM and the differences image by image) or ``batch`` (what it ran before: ``ssim_pairs``, then
``diff_measures`` of each pair on the whole 7-image batch). Settings: none (glibc's dynamic mmap threshold),
``mmap1m`` ... ``mmap32m`` (``mallopt(M_MMAP_THRESHOLD, N MiB)`` before the measures; a fixed threshold also
fixes glibc's trim threshold at 128 KiB instead of twice the dynamic mmap threshold), ``trim``
(``malloc_trim(0)`` after each pass), ``arena2`` (``MALLOC_ARENA_MAX=2`` in the child's environment: are
per-thread arenas the cause?). ``plain`` is ``per_image``. Records the peak above the RSS before the measures,
malloc's bytes in use and its free heap bytes after, and the CPU time. Linux with glibc only.
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

    from iqadef.plugins.scores._measures import diff_measures, pair_measures, ssim_pairs

    pairs = unit_pairs()
    out: dict = {}
    code, _, setting = variant.partition("+")
    if code not in ("batch", "per_image"):
        code, setting = "per_image", code if code != "plain" else ""

    def work() -> None:
        if setting.startswith("mmap"):  # mmap<N>m: M_MMAP_THRESHOLD of N MiB
            ctypes.CDLL("libc.so.6").mallopt(-3, int(setting[4:-1]) << 20)
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        cpu = time.thread_time()
        for _ in range(passes):
            if code == "batch":
                values = ssim_pairs(pairs)
                values += [diff_measures(a, b)["mse"] for a, b in pairs]
            else:
                values = pair_measures(pairs)
            del values
            if setting == "trim":
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
    args = sys.argv[1:]
    passes = 3
    if "--passes" in args:
        at = args.index("--passes")
        passes, args = int(args[at + 1]), args[:at] + args[at + 2:]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "OMP_NUM_THREADS": "1"}
    rows: dict = {}
    load = [os.getloadavg()]
    for variant in args or ("batch", "per_image", "batch+arena2", "per_image+arena2", "batch+mmap4m", "per_image+mmap4m"):
        child_env = {**env, "MALLOC_ARENA_MAX": "2"} if variant.endswith("+arena2") else env
        done = subprocess.run([sys.executable, __file__, "--child", variant, str(passes)], capture_output=True,
                              text=True, env=child_env, check=True)
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, {k: round(v, 1) for k, v in rows[variant].items()}, flush=True)
    load.append(os.getloadavg())
    result = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg_before_after": load,
              "passes": passes, "variants": rows, "cpu_count": os.cpu_count()}
    name = f"measures_memory{'_' + '_'.join(args).replace('+', '-') if args else '_per_image'}.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
