"""The driver: plans the grid, hands units to an executor (execute/executors.py, by name) and is the only
writer of the run folder and the result store; then exports the tables. Entry point: :func:`run_grid`."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from iqadef.analysis.scores import warn_scores
from iqadef.analysis.verdict import study_rows, write_verdict
from iqadef.config.registry import RunConfig
from iqadef.core.dataset import Dataset
from iqadef.core.plugins import InstalledPlugins
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.core.weights import fetch_missing
from iqadef.execute.execution import ExecutionContext
from iqadef.execute.executors import executor_named
from iqadef.execute.progress import _progress
from iqadef.execute.worker import Worker
from iqadef.plan.grid import GridIndex, grid_defences, grid_size, plan_units, reuse_renamed, run_info
from iqadef.plan.trained import mark_trained_cells, overlap_problems, trained_images
from iqadef.store.results import (
    IDENTITY_COLUMNS,
    ResultStore,
    RunLock,
    atomic_write_bytes,
    export_tables,
)
from iqadef.store.rundir import prepare_run_dir


# ------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    run_dir: Path
    total: int
    computed: int
    skipped: int
    failed: int
    seconds: float
    table: pd.DataFrame
    files: dict[str, Path]
    problems: list[str]
    #: Cells in the store from other grids (other parameters, weights, images): kept, not exported.
    other_cells: int = 0
    #: Cells of renamed images whose stored rows were copied to the new name (counted as already done).
    relabelled: int = 0
    #: A ``protocol:`` run's verdict (analysis/verdict.py ``Verdict``), also written as verdict.csv/.parquet
    verdict: Any = None


@renamed_registry_keyword
def run_grid(
    config: RunConfig,
    *,
    fresh: bool = False,
    limit: int | None = None,
    progress: bool | None = None,
    executor: str | None = None,
    after_unit: Callable[[int], None] | None = None,
    plugins: InstalledPlugins | None = None,
    announce: Callable[[str], None] | None = None,
    on_cells: Callable[[int], None] | None = None,
) -> RunSummary:
    """Run (or resume) the grid of ``config``; returns the summary. See the module docstring.

    ``announce`` receives the opening line (grid size, cells to do and already done, device) once the
    units are planned; ``on_cells`` the number of cells finished, as they finish (per defence with the local
    executor, per unit with Ray), from the thread computing them."""
    start = time.perf_counter()
    output = config.output
    folder = prepare_run_dir(output)
    with RunLock(output):
        if fresh:
            folder.fresh()
        folder.remove_stale_temp_files()
        device = config.torch_device()
        dataset = config.open_dataset(limit=limit)
        store = ResultStore(output)
        try:
            trained = trained_images(config.metrics)  # trained artefacts meeting their own training images
            trained_defences = trained_images(grid_defences(config))
            dataset.problems.extend(
                overlap_problems(trained, dataset) + overlap_problems(trained_defences, dataset, "defence")
            )
            info = run_info(config, dataset, limit, plugins)
            atomic_write_bytes(output / "run.json", json.dumps(info, indent=2).encode())
            warn_scores(info["metrics"])  # a metric whose scores reach 0 or below: its gain misleads
            fetch_missing(config.plugins())  # a missing weight file stops the run now, not hours in
            finished = store.finished()
            relabelled = reuse_renamed(store, config, dataset, finished)
            units = plan_units(config, dataset, finished)
            size = grid_size(config, dataset, units)
            total_cells, todo_cells = size.cells, size.todo
            computed = 0
            executor = executor or config.executor
            if announce is not None:
                announce(opening_line(config, len(dataset), total_cells, todo_cells, device, executor))
            if units:
                cells = _Cells()  # the executor reports cells as they finish; the bar is up from the first unit
                context = ExecutionContext(config, dataset, output, device, plugins, on_cells=cells)
                stream = executor_named(executor)(context, units)  # its checks (Ray's options, pickling) first
                with _progress(progress, len(units), todo_cells) as bar:
                    cells.report = _report_cells(bar, on_cells)
                    for n, (unit, result) in enumerate(stream, start=1):
                        folder.record(rel for rel, _ in result.files)  # listed before written
                        for rel, data in result.files:
                            atomic_write_bytes(output / rel, data)
                        store.write_cells(result.rows, result.artifacts)
                        computed += len(result.rows)
                        rest = bar.unit(len(result.rows))
                        if rest and on_cells is not None:
                            on_cells(rest)
                        if after_unit is not None:
                            after_unit(n)
            everything = store.dataframe()
            current = GridIndex(config, dataset)
            in_grid = [key in current for key in everything[list(IDENTITY_COLUMNS)].itertuples(index=False, name=None)]
            df = mark_trained_cells(
                current_labels(everything[in_grid].reset_index(drop=True), config), trained, trained_defences
            )
            other = len(everything) - len(df)
        finally:
            store.close()
        files = export_tables(df, output)
        failed = int((df["status"] != "ok").sum()) if len(df) else 0
        verdict = None
        if config.protocol is not None:  # the robustness protocol (docs/evaluation.md)
            from iqadef.report.verdict_section import protocol_verdict

            verdict = protocol_verdict(df, info)
            folder.record(["verdict.csv", "verdict.parquet"])
            files.update(write_verdict(verdict, output, lambda path, data: (atomic_write_bytes(path, data), path)[1]))
            df = study_rows(df, info)  # the short table: the run's own attacks, as without the protocol
        table = summary_table(df, info)
    return RunSummary(
        output,
        total_cells,
        computed,
        total_cells - todo_cells,
        failed,
        time.perf_counter() - start,
        table,
        files,
        list(dataset.problems),
        other,
        relabelled,
        verdict,
    )


def current_labels(df: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """The run's rows under the labels of the run's configuration (found by key): a cell stored under a
    label of an older iqadef (``eps=0.0156863`` for ``eps=4/255``, ``jpeg`` for a sweep's
    ``jpeg[quality=50]``) is the same cell, and shows as the rest of the run does. The store keeps what it
    stored; only the exported tables are relabelled."""
    plugins = {"metric": config.metrics, "attack": config.attacks, "defence": grid_defences(config)}
    for column, items in plugins.items():
        if len(df) and f"{column}_key" in df.columns:
            by_key = {item.key(): item.label for item in items}
            df[column] = df[f"{column}_key"].map(by_key).fillna(df[column])
    return df


class _Cells:
    """The executor's ``on_cells``: forwards to :attr:`report` once it is set (when the progress bar is up)."""

    def __init__(self) -> None:
        self.report: Callable[[int], None] | None = None

    def __call__(self, n: int) -> None:
        if self.report is not None:
            self.report(n)


def _report_cells(bar: Any, on_cells: Callable[[int], None] | None) -> Callable[[int], None]:
    """The worker's ``on_cells``: the bar, then the caller's callback."""

    def report(n: int) -> None:
        bar.cell(n)
        if on_cells is not None:
            on_cells(n)

    return report


def opening_line(config: RunConfig, images: int, total: int, todo: int, device: Any, executor: str) -> str:
    """``grid: 7 images x 1 metric x 2 attacks x 16 defences = 224 cells; 224 to do; device cpu``."""

    def n(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    done = total - todo
    state = f"{todo} to do" + (f", {done} already done (resumed)" if done else "")
    where = f"; executor {executor}" if executor != "local" else ""
    return (
        f"grid: {n(images, 'image')} x {n(len(config.metrics), 'metric')} x {n(len(config.attacks), 'attack')} "
        f"x {n(len(grid_defences(config)), 'defence')} = {total} cells; {state}; device {device}{where}"
    )


def summary_table(df: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """The short end-of-run table: the report's mean gain |f(x) - f(D(x_a))| / f(x) per metric x attack x
    defence, with its interval (report/tables.py, :func:`~iqadef.analysis.scores.paper_gain`)."""
    from iqadef.report import summary_table as report_summary

    return report_summary(df, info)


def measure_units(
    config: RunConfig, dataset: Dataset, units: list, *, plugins: InstalledPlugins | None = None
) -> dict[str, Any]:
    """``iqadef plan --measure``: time the first unit of each metric x attack, computed in a temporary
    folder (the run folder is not touched, no cache is used), and scale each unit still to do by its share
    of defences and images. A rough estimate: plugins are loaded before the clock starts (a run loads each
    once more), the clean side of a batch is timed with the first attack as in a run, and a batch's cost
    grows with its images' sizes, not only with their number."""
    device = config.torch_device()
    batches = dataset.batches(config.batch_size)
    first: dict[tuple[int, int], Any] = {}
    for unit in units:
        first.setdefault((unit.metric, unit.attack), unit)
    timed: dict[tuple[int, int], float] = {}
    defences = grid_defences(config)  # a unit's defence indices count the certified defences too
    with tempfile.TemporaryDirectory(prefix="iqadef-plan-") as tmp:
        worker = Worker(config, dataset, Path(tmp), lambda key: None, device, plugins)
        for pair, unit in first.items():
            for plugin in (
                config.metrics[unit.metric],
                config.attacks[unit.attack].attack,
                *(defences[d] for d in unit.defences),
            ):
                plugin.load(device)
            started = time.perf_counter()
            worker.compute(unit)
            timed[pair] = (time.perf_counter() - started) / (len(unit.defences) * len(batches[unit.batch]))
    seconds = sum(timed[(u.metric, u.attack)] * len(u.defences) * len(batches[u.batch]) for u in units)
    return {
        "seconds": seconds,
        "timed_units": len(first),
        "device": str(device),
        "seconds_per_cell": {
            f"{config.metrics[m].label} x {config.attacks[a].label}": t for (m, a), t in timed.items()
        },
    }
