"""The run step's seams: certified cells and re-draws reach the worker only through its public seams, rows come
from one builder, and executors are looked up in one table."""

from __future__ import annotations

import ast
import math

import pytest
import torch
from repo_paths import REPO_ROOT
from toy_plugins import small_grid_config

from iqadef.config.registry import EXECUTOR_NAMES
from iqadef.core.dataset import Dataset
from iqadef.core.errors import ConfigError
from iqadef.execute import EXECUTORS, ExecutionContext, execute_local, run_grid
from iqadef.execute.executors import executor_named
from iqadef.execute.rows import build_rows
from iqadef.plan.grid import plan_units

RUN = REPO_ROOT / "src" / "iqadef" / "execute"


@pytest.mark.parametrize("module", ["smoothed.py", "redraw.py"])
def test_certified_cells_and_redraws_use_only_public_worker_members(module):
    tree = ast.parse((RUN / module).read_text())
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and "worker" in ast.unparse(node.value)
        }
    )
    assert private == []


def test_one_row_builder_fails_a_nan_row_and_names_the_values(tmp_path, image_dir, toy_registry):
    config = small_grid_config(tmp_path, image_dir, toy_registry, "run")
    dataset = Dataset(config.images, config.mos, max_side=config.max_side)
    unit = plan_units(config, dataset, set())[0]
    items = dataset.batches(config.batch_size)[unit.batch]
    n = len(items)
    values = [torch.ones(n), torch.ones(n), torch.full((n,), math.nan), torch.ones(n)]
    files: list = []
    rows = build_rows(
        config,
        unit,
        unit.defences[0],
        items,
        ["k"] * n,
        values,
        ["a.png"] * n,
        lambda p: 7.0,
        {"psnr": torch.arange(n, dtype=torch.float)},
        lambda i: {"cert_radius": 0.5},
        {items[0].name},
        lambda i: torch.zeros(3, 4, 4),
        files,
        names=("a", "b", "f_s(x)", "d"),
    )
    assert [r["status"] for r in rows] == ["failed"] * n
    assert all(r["error"].endswith("returned NaN/inf for f_s(x)") for r in rows)
    assert rows[1]["scores"] == {"psnr": 1.0, "cert_radius": 0.5} and rows[0]["queries"] == 7.0
    assert [rel for rel, _ in files] == [rows[0]["example_path"]] and not rows[1]["example_path"]


def test_executors_are_looked_up_by_name_and_the_driver_uses_the_table(tmp_path, image_dir, toy_registry, monkeypatch):
    assert set(EXECUTORS) == {"local", "ray"} and executor_named("local") is execute_local
    assert tuple(EXECUTORS) == EXECUTOR_NAMES  # what the registry file and the command line accept
    with pytest.raises(ConfigError, match=r"executor: 'nope' is not an executor; use one of local, ray"):
        executor_named("nope")
    seen: list[ExecutionContext] = []

    def recording(context, units):
        seen.append(context)
        return execute_local(context, units)

    monkeypatch.setitem(EXECUTORS, "local", recording)
    config = small_grid_config(tmp_path, image_dir, toy_registry, "run")
    cells: list[int] = []
    summary = run_grid(config, plugins=toy_registry, progress=False, on_cells=cells.append)
    assert len(seen) == 1 and seen[0].cached and seen[0].timeout == config.unit_timeout
    assert summary.computed == sum(cells) == summary.total > 0
