"""The run's opening line and the per-cell progress (Worker.on_cells -> the cells bar), without a terminal."""

from __future__ import annotations

import io

from rich.console import Console
from toy_plugins import small_grid_config

import iqadef.execute.driver as driver
from iqadef.execute import run_grid
from iqadef.execute.progress import _progress


def test_cells_bar_counts_per_cell_reports_and_the_rest_of_a_unit():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with _progress(True, 2, 8, console=console) as bar:
        bar.cell(2)
        bar.cell(2)
        assert bar.progress.tasks[1].completed == 4 and bar.progress.tasks[0].completed == 0
        assert bar.unit(4) == 0  # all four were reported one defence at a time
        assert bar.unit(4) == 4  # an executor without per-cell reports (Ray): the unit's rows at once
        assert [t.completed for t in bar.progress.tasks] == [2, 8]
    assert (bar.units_done, bar.cells_done) == (2, 8)


def test_run_reports_cells_as_each_defence_finishes(tmp_path, image_dir, toy_registry, monkeypatch):
    bars = []

    class Recording(_progress):
        def __enter__(self):
            bars.append(super().__enter__())
            return bars[-1]

    monkeypatch.setattr(driver, "_progress", Recording)
    config = small_grid_config(tmp_path, image_dir, toy_registry, "run")
    calls, units, lines = [], [], []
    summary = run_grid(
        config,
        progress=False,
        plugins=toy_registry,
        on_cells=calls.append,
        after_unit=units.append,
        announce=lines.append,
    )
    # 6 images in batches of 2 (three units of 1 metric x 1 attack), 2 defences: one call per defence
    assert len(units) == 3 and calls == [2] * 6 and sum(calls) == summary.computed == 12
    assert (bars[0].units_done, bars[0].cells_done) == (3, 12)
    assert lines == ["grid: 6 images x 1 metric x 1 attack x 2 defences = 12 cells; 12 to do; device cpu"]

    lines.clear()
    run_grid(config, progress=False, plugins=toy_registry, announce=lines.append)
    assert lines == [
        "grid: 6 images x 1 metric x 1 attack x 2 defences = 12 cells; 0 to do, 12 already done (resumed); device cpu"
    ]


def test_iqadef_run_prints_the_opening_line_first(tmp_path, image_dir, toy_registry, monkeypatch, capsys):
    import iqadef.cli as cli

    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    small_grid_config(tmp_path, image_dir, toy_registry, "run")
    assert cli.main(["run", str(tmp_path / "run.yaml"), "--limit", "2", "--no-report", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "grid: 2 images x 1 metric x 1 attack x 2 defences = 4 cells; 4 to do; device cpu"
