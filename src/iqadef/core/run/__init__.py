"""Running a grid: registry -> **plan -> execute -> store** -> export / report.

One module per step, each importing only the ones before it:

* :mod:`.artifacts` - content keys and seeds; the 8-bit PNG codec of cached adversarial images;
* :mod:`.plan` - the cells' identity (plugins, image content, batch) and the work units still to do;
* :mod:`.worker` - computes one unit and checks every plugin output against its contract;
* :mod:`.local` and :mod:`.ray` - the executors: take units, yield ``(unit, UnitResult)``;
* :mod:`.driver` - :func:`run_grid`: plans, drives an executor, is the only writer of the run folder and
  the store (:mod:`iqadef.core.store`), exports the tables;
* :mod:`.progress` - progress bars; :mod:`.verify` - ``iqadef verify``: recompute stored cells and compare.
"""

from __future__ import annotations

from .driver import RunSummary, run_grid, summary_table
from .local import UnitTimeout, abandoned_units, execute_local
from .plan import GridIndex, Unit, batch_keys, grid_keys, plan_units
from .worker import CellFailure, UnitResult, Worker

__all__ = ["CellFailure", "GridIndex", "RunSummary", "Unit", "UnitResult", "UnitTimeout", "Worker", "abandoned_units",
           "batch_keys", "execute_local", "grid_keys", "plan_units", "run_grid", "summary_table"]
