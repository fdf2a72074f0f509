"""A finished run read back: its ``run.json``, the grid and dataset rebuilt from the registry it recorded, and
the stored cells its tables hold now. What ``iqadef export`` and ``iqadef verify`` share, so both read a run
the way the run itself selects and checks its rows (the store's :func:`~iqadef.store.results.read_cells`, the
run's :class:`~iqadef.plan.grid.GridIndex`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iqadef.config.registry import RunConfig, parse_run_config
from iqadef.core.dataset import Dataset
from iqadef.core.errors import IqadefError
from iqadef.plan.grid import GridIndex
from iqadef.store.results import IDENTITY_COLUMNS, StoredCells


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run_dir/run.json`` with the registry it recorded; one line for a missing, unreadable or older file."""
    path = Path(run_dir) / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IqadefError(f"{path}: missing; is {path.parent} a run folder of `iqadef run` (its `output`)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IqadefError(f"{path}: cannot be read ({exc}); run the registry again to write it") from None
    if not isinstance(data, dict) or not isinstance(data.get("registry"), dict):
        raise IqadefError(f"{path}: holds no registry; run the registry again with this iqadef to write it")
    if not data.get("registry_file"):
        raise IqadefError(
            f"{path}: written by an older iqadef (no `registry_file`); run the registry again "
            f"with this iqadef (it recomputes cells that lack an image hash)"
        )
    return data


def open_grid(run_dir: Path, info: dict[str, Any], plugins: Any) -> tuple[RunConfig, Dataset]:
    """The run's configuration (from the registry in ``run.json``) and its dataset as the folder gives it now."""
    config = parse_run_config(dict(info["registry"]), Path(info["registry_file"]), plugins=plugins)
    config.output, config.executor = Path(run_dir), "local"
    try:
        dataset = config.open_dataset(limit=info.get("limit"))
    except IqadefError as exc:
        raise IqadefError(
            f"{run_dir}: the run's dataset cannot be opened ({exc}); it is needed to tell the run's "
            f"current cells from older ones in its store"
        ) from None
    return config, dataset


def current_rows(stored: StoredCells, config: RunConfig, dataset: Dataset) -> tuple[list[dict[str, Any]], int]:
    """The stored rows that ``results.parquet`` shows as ok: of the grid as it is now (the run's own
    selection, :class:`GridIndex`), successful, checksum intact. Also the number of the grid's rows left
    out because their checksum fails (the table shows those as failed)."""
    index = GridIndex(config, dataset)
    in_grid = [
        (row, ok) for row, ok in zip(stored.rows, stored.intact) if tuple(row.get(c) for c in IDENTITY_COLUMNS) in index
    ]
    return [row for row, ok in in_grid if ok and row.get("status") == "ok"], sum(not ok for _, ok in in_grid)


__all__ = ["current_rows", "open_grid", "read_run_info"]
