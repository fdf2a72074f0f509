"""`iqadef plan` counts the grid as the run does (one grid_size), certified defences included, and
`plan --measure` times a grid with certified defences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_plugins import SMALL_GRID

from iqadef import cli
from iqadef.cli import main
from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid

CERTIFIED = """certified:
  - {name: median-smoothing, n: 8, sigma: 0.05, eps: 0.05, batch: 8}
  - {name: mean-smoothing, n: 8, sigma: 0.05, eps: 0.05, low: 0, high: 4}
"""


def registry_file(tmp_path: Path, images: Path, certified: bool) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(SMALL_GRID.format(images=images, output=tmp_path / "run") + (CERTIFIED if certified else ""))
    return path


def plan(path: Path, capsys, *extra: str) -> dict:
    assert main(["plan", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("certified", [False, True])
def test_plan_totals_equal_the_runs(tmp_path, image_dir, toy_registry, monkeypatch, capsys, certified):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    path = registry_file(tmp_path, image_dir, certified)
    defences = 2 + (2 if certified else 0)  # no-defence, toy-blur (+ median, mean smoothing)
    before = plan(path, capsys)
    assert (before["cells"], before["cells_done"], before["cells_to_do"]) == (6 * defences, 0, 6 * defences)
    assert len(before["certified"]) == (2 if certified else 0)

    lines = []
    config = load_run_config(path, plugins=toy_registry)
    partial = run_grid(config, plugins=toy_registry, progress=False, limit=2, announce=lines.append)
    assert (partial.total, partial.computed) == (2 * defences, 2 * defences)
    middle = plan(path, capsys)
    assert (middle["cells"], middle["cells_done"], middle["cells_to_do"]) == (6 * defences, 2 * defences, 4 * defences)
    full = run_grid(
        load_run_config(path, plugins=toy_registry), plugins=toy_registry, progress=False, announce=lines.append
    )
    assert (full.total, full.skipped, full.computed) == (middle["cells"], middle["cells_done"], middle["cells_to_do"])
    assert (
        f"x {defences} defences = {6 * defences} cells; {4 * defences} to do, {2 * defences} already done" in lines[-1]
    )
    after = plan(path, capsys)
    assert (after["cells"], after["cells_done"], after["cells_to_do"]) == (full.total, full.total, 0)

    assert main(["plan", str(path)]) == 0  # the text form says the same
    text = capsys.readouterr().out
    assert f"x {defences} defences = {6 * defences} cells" in text
    assert "cells: 0 to do in 0 units" in text and f"{6 * defences} already in" in text


def test_plan_measure_times_a_grid_with_certified_defences(tmp_path, image_dir, toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    path = registry_file(tmp_path, image_dir, certified=True)
    measured = plan(path, capsys, "--measure", "--limit", "2")["measured"]
    assert measured["seconds"] > 0 and measured["timed_units"] == 1
    assert not (tmp_path / "run").exists()  # measuring writes nothing into the run folder
