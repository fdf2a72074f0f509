"""Where the peak RSS of ``iqadef run registry.yaml`` goes: per plugin call, per unit, per report step.

    python benchmarks/memory_breakdown.py                         # registry.yaml, fresh output in /tmp
    python benchmarks/memory_breakdown.py --env MALLOC_MMAP_THRESHOLD_=131072   # the same under another malloc setting
    python benchmarks/memory_breakdown.py --limit 7 --tracemalloc   # quicker; the report's Python allocations too

The child process runs ``iqadef run REGISTRY --fresh`` through the CLI's own ``main`` (the same code as the
command), with wrappers installed from outside (no change to the code measured): around every plugin call
(``Sandbox.call``, execute/sandbox.py: an attack's ``run``, a defence's ``purify``, a metric's ``score``, an image score's
``compute``, a plugin's ``setup``), every unit (``Worker.compute``) and every step of ``write_report``.
Before each wrapped call the kernel's high-water mark is reset (``/proc/self/clear_refs``), so the
VmHWM read after it is the peak *of that call*; glibc's ``mallinfo2`` gives what malloc holds in use
against what it keeps from the system (the gap is freed memory the allocator has not returned: its
cache, not live data). The process's overall peak is the largest of these segment peaks; GNU ``time -v``
of the same command (``--time-v``) gives the figure the user sees. Linux with glibc only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_mb() -> dict[str, float]:
    """glibc's view: bytes in use (heap chunks + mmapped) and bytes held free in its heaps."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    mb = 1024 * 1024
    return {"in_use_mb": (info.uordblks + info.hblkhd) / mb, "mmapped_mb": info.hblkhd / mb,
            "heap_mb": info.arena / mb, "heap_free_mb": info.fordblks / mb}


class Recorder:
    """Segments between resets of the high-water mark: each has a label, its peak and the RSS after it."""

    def __init__(self) -> None:
        self.segments: list[dict[str, Any]] = []
        self.label = "imports"
        self.t0 = time.perf_counter()

    def cut(self, next_label: str) -> dict[str, Any]:
        row = {"label": self.label, "peak_mb": round(_status_mb("VmHWM"), 1),
               "rss_after_mb": round(_status_mb("VmRSS"), 1), "t_s": round(time.perf_counter() - self.t0, 2),
               **{k: round(v, 1) for k, v in _malloc_mb().items()}}
        self.segments.append(row)
        Path("/proc/self/clear_refs").write_text("5")
        self.label = next_label
        return row


def child(registry: Path, output: Path, limit: int | None, trace_python: bool) -> dict[str, Any]:
    import iqadef.report as report
    from iqadef import cli
    from iqadef.execute import sandbox as sandbox_mod
    from iqadef.execute import worker as worker_mod

    rec = Recorder()
    tracemalloc = None
    if trace_python:
        import tracemalloc
    py_peaks: dict[str, float] = {}
    unit_no = [0]

    def segment(label: str, call: Callable[[], Any], after: str) -> Any:
        rec.cut(label)
        if tracemalloc is not None:
            tracemalloc.start()
        try:
            return call()
        finally:
            if tracemalloc is not None:
                py_peaks[label] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            rec.cut(after)

    original_call = sandbox_mod.Sandbox.call
    original_compute = worker_mod.Worker.compute

    def _call(self, who, method, call, seals=(), deep=True):  # type: ignore[no-untyped-def]
        return segment(f"unit {unit_no[0]}: {who} ({method})",
                       lambda: original_call(self, who, method, call, seals, deep), f"unit {unit_no[0]}: worker")

    def compute(self, unit):  # type: ignore[no-untyped-def]
        unit_no[0] += 1
        rec.cut(f"unit {unit_no[0]}: worker")
        out = original_compute(self, unit)
        rec.cut("driver (store, next unit)")
        return out

    sandbox_mod.Sandbox.call = _call  # type: ignore[method-assign]
    worker_mod.Worker.compute = compute  # type: ignore[method-assign]
    for name in ("load_results", "protocol_verdict", "study_rows", "report_tables", "draw_figures", "draw_tradeoffs",
                 "write_html", "write_markdown"):
        original = getattr(report, name)

        def wrapped(*a, _f=original, _n=name, **k):  # type: ignore[no-untyped-def]
            return segment(f"report: {_n}", lambda: _f(*a, **k), "report: between steps")

        setattr(report, name, wrapped)
    rec.cut("cli (planning, plugins' setup before the first unit)")
    args = ["run", str(registry), "--fresh", "--output", str(output), "--no-progress"]
    if limit:
        args += ["--limit", str(limit)]
    status = cli.main(args)
    rec.cut("end")
    return {"exit": status, "segments": rec.segments, "tracemalloc_peak_mb": py_peaks,
            "ru_maxrss_mb": __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024}


def summarise(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak per kind of segment (the plugin call without the unit number), largest first."""
    by_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"peak_mb": 0.0, "count": 0, "seconds": 0.0})
    prev_t = 0.0
    for row in segments:
        kind = row["label"].split(": ", 1)[-1] if row["label"].startswith("unit ") else row["label"]
        k = by_kind[kind]
        if row["peak_mb"] > k["peak_mb"]:
            k.update(peak_mb=row["peak_mb"], at=row["label"], rss_after_mb=row["rss_after_mb"],
                     in_use_after_mb=row["in_use_mb"], heap_free_after_mb=row["heap_free_mb"])
        k["count"] += 1
        k["seconds"] = round(k["seconds"] + row["t_s"] - prev_t, 2)
        prev_t = row["t_s"]
    return dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["peak_mb"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, default=ROOT / "registry.yaml")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the child (malloc settings)")
    ap.add_argument("--tracemalloc", action="store_true", help="also Python's allocations per segment (slower)")
    ap.add_argument("--time-v", action="store_true", help="also run the plain CLI under GNU time -v")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "memory_breakdown.json")
    ap.add_argument("--child", nargs=2, metavar=("REGISTRY", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("\n" + json.dumps(child(Path(args.child[0]), Path(args.child[1]), args.limit, args.tracemalloc)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **dict(e.split("=", 1) for e in args.env)}
    load = [os.getloadavg()]
    result: dict[str, Any] = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "registry": str(args.registry), "limit": args.limit, "env": args.env}
    with tempfile.TemporaryDirectory(prefix="iqadef-breakdown-") as tmp:
        cmd = [sys.executable, __file__, "--child", str(args.registry), str(Path(tmp) / "run")]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        cmd += ["--tracemalloc"] if args.tracemalloc else []
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        result["breakdown_wall_s"] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if args.time_v:
            cli = [sys.executable, "-m", "iqadef", "run", str(args.registry), "--fresh", "--output",
                   str(Path(tmp) / "plain"), "--no-progress"] + (["--limit", str(args.limit)] if args.limit else [])
            timed = subprocess.run(["/usr/bin/time", "-v", *cli], capture_output=True, text=True, env=env, check=False)
            fields = dict(line.strip().rsplit(": ", 1) for line in timed.stderr.splitlines()
                          if ": " in line and line.startswith("\t"))
            result["time_v"] = {"max_rss_mb": int(fields["Maximum resident set size (kbytes)"]) / 1024,
                                "elapsed": fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"],
                                "user_s": float(fields["User time (seconds)"]),
                                "system_s": float(fields["System time (seconds)"]), "exit": timed.returncode}
    load.append(os.getloadavg())
    segs = row["segments"]
    result.update(loadavg_before_after=load, exit=row["exit"], ru_maxrss_mb=row["ru_maxrss_mb"],
                  overall_peak_mb=max(s["peak_mb"] for s in segs),
                  by_kind=summarise(segs), tracemalloc_peak_mb=row["tracemalloc_peak_mb"], segments=segs)
    for kind, k in list(result["by_kind"].items())[:15]:
        print(f"{k['peak_mb']:8.0f} MB peak  {k['count']:4d}x  {k['seconds']:7.1f} s  {kind}  "
              f"(after: rss {k['rss_after_mb']:.0f}, malloc in use {k['in_use_after_mb']:.0f}, "
              f"heap free {k['heap_free_after_mb']:.0f})")
    print(f"overall peak {result['overall_peak_mb']:.0f} MB; ru_maxrss {row['ru_maxrss_mb']:.0f} MB; "
          f"time -v {result.get('time_v')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
