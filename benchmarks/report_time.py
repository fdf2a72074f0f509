"""Wall time of ``iqadef report RUN`` in a fresh process: a base revision (default: main) against this tree.

Each candidate runs ``python -m iqadef report`` on its own copy of the run folder, interleaved round-robin
with a rotating order (so the load of a shared machine hits all alike), ``--repeats`` times; the median is
reported with the load before and after, and the CPU time (user + system) of the report process and its
children (the figures' renders), which a shared machine's load changes far less than the wall time. Candidates:

* ``before``: the base revision's ``src`` (``git archive``), built-in plugins only (``IQADEF_LOAD_PLUGINS=``)
* ``after_first``: this tree, no thumbnail cache (removed before each run): a first report
* ``after``: this tree, the thumbnail cache of the previous report in place (a report written again)
* with ``--installed``, also ``before_installed`` / ``after_installed``: as ``before`` / ``after`` with every
  installed third-party plugin loaded (their own imports count then: a plugin that imports torch at import
  brings torch back)

The last report of ``before`` and ``after`` are compared: report.html with the figures' data URIs and the
results' timestamp left out must be identical (the figures may differ in layout only).

    python benchmarks/report_time.py --run runs/default            # `iqadef run registry.yaml` writes it
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import loadavg, machine, write_result

ROOT = Path(__file__).resolve().parents[1]


def base_src(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def comparable(html: str) -> str:
    """report.html without what may differ between two reports of the same run: the figures' pixels (their
    data URIs) and the stamp of the results' modification time."""
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,...", html)
    return re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", "YYYY-MM-DD HH:MM UTC", html)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default", help="a finished run folder")
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--installed", action="store_true", help="also time with the installed plugins loaded")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "report_time.json")
    args = parser.parse_args()
    if not (args.run / "run.json").is_file():
        sys.exit(f"{args.run}: not a finished run folder; run `iqadef run registry.yaml` first (writes runs/default)")
    work = Path(tempfile.mkdtemp(prefix="report-time-"))
    try:
        before = base_src(args.base, work)
        after = ROOT / "src"
        thumbnails = Path("cache") / "report-thumbnails.json"
        candidates: dict[str, tuple[Path, str | None]] = {"before": (before, ""), "after_first": (after, ""),
                                                          "after": (after, "")}
        if args.installed:
            candidates.update({"before_installed": (before, None), "after_installed": (after, None)})
        runs = {}
        for name in candidates:
            runs[name] = work / name / args.run.name  # one folder name: the page's title is the same
            shutil.copytree(args.run, runs[name], ignore=shutil.ignore_patterns("report.*", "figures", "summary.csv"))
            (runs[name] / thumbnails).unlink(missing_ok=True)

        cpu: dict[str, list[float]] = {name: [] for name in candidates}

        def report(name: str) -> float:
            src, plugins = candidates[name]
            if name == "after_first":
                (runs[name] / thumbnails).unlink(missing_ok=True)
            env = {**os.environ, "PYTHONPATH": str(src)}
            env.pop("IQADEF_LOAD_PLUGINS", None)
            if plugins is not None:
                env["IQADEF_LOAD_PLUGINS"] = plugins
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "iqadef", "report", str(runs[name])], env=env,
                                 capture_output=True, text=True, timeout=900)
            seconds = time.perf_counter() - start
            after_use = resource.getrusage(resource.RUSAGE_CHILDREN)
            if out.returncode != 0:
                sys.exit(f"{name}: iqadef report failed:\n{out.stderr[-3000:]}")
            print(f"{name}: {seconds:.2f} s", file=sys.stderr, flush=True)
            cpu[name].append(
                round(after_use.ru_utime + after_use.ru_stime - used.ru_utime - used.ru_stime, 3)
            )
            return seconds

        load_before, started = loadavg(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        for name in candidates:  # warm-up: file caches, and the thumbnail cache of `after`
            report(name)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for name in candidates:
            cpu[name].clear()  # the warm-up's CPU time is left out as its wall time is
        names = list(candidates)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(report(name))
        load_after = loadavg()
        same = comparable((runs["before"] / "report.html").read_text()) == comparable(
            (runs["after"] / "report.html").read_text())
        medians = {name: round(statistics.median(t), 3) for name, t in times.items()}
        cpu_medians = {name: round(statistics.median(t), 3) for name, t in cpu.items()}
        same_files = {
            name: (runs["before"] / name).read_bytes() == (runs["after"] / name).read_bytes()
            for name in ("summary.csv", "report.md")
        }
        figures = sorted(p.name for p in (runs["before"] / "figures").glob("*.png"))
        same_figures = figures == sorted(p.name for p in (runs["after"] / "figures").glob("*.png")) and all(
            (runs["before"] / "figures" / f).read_bytes() == (runs["after"] / "figures" / f).read_bytes()
            for f in figures
        )
        result = {
            "benchmark": "report_time", "base": args.base, "run": str(args.run), "repeats": args.repeats,
            "started_utc": started, "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "load_before": load_before,
            "load_after": load_after, "machine": machine(), "seconds": times, "median_seconds": medians,
            "cpu_seconds": cpu, "median_cpu_seconds": cpu_medians,
            "speedup": round(medians["before"] / medians["after"], 2),
            "cpu_speedup": round(cpu_medians["before"] / cpu_medians["after"], 2),
            "speedup_first_report": round(medians["before"] / medians["after_first"], 2),
            "html_identical_apart_from_figures_and_timestamp": same,
            "summary_csv_identical": same_files["summary.csv"], "report_md_identical": same_files["report.md"],
            "figure_pngs_byte_identical": same_figures,
        }
        write_result(args.out, result)
        for name, value in medians.items():
            print(f"{name:>17}: {value:6.2f} s wall, {cpu_medians[name]:6.2f} s CPU (medians of {args.repeats})")
        print(f"report.html identical apart from figures and timestamp: {same}; summary.csv, report.md identical: "
              f"{same_files}; figure PNGs byte-identical: {same_figures}; load {load_before} -> {load_after}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
