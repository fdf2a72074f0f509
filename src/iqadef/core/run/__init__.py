"""Running a grid: registry -> **plan -> execute -> store** -> export / report.

One module per step, each importing only the ones before it:

* :mod:`.artifacts` - content keys and seeds; the 8-bit PNG codec of cached adversarial images;
* :mod:`.plan` - the cells' identity (plugins, image content, batch) and the work units still to do;
* :mod:`.worker` - computes one unit over its seams: :mod:`.sandbox` (every plugin call: inputs sealed,
  outputs checked against the contract, errors into failed cells), :mod:`.caches` (the clean side, the
  adversarial images), :mod:`.rows` (the one row builder), :mod:`.smoothed` (certified cells);
* :mod:`.execution` - the executors' contract (:class:`ExecutionContext`, ``unit_timeout``);
  :mod:`.executors` - the table of executors by name: :mod:`.local` and :mod:`.ray`;
* :mod:`.driver` - :func:`run_grid`: plans, drives an executor, is the only writer of the run folder and
  the store (:mod:`iqadef.core.store`), exports the tables;
* :mod:`.progress` - progress bars; :mod:`.verify` - ``iqadef verify``: recompute stored cells and compare.
"""

from __future__ import annotations

from .driver import RunSummary, run_grid, summary_table
from .execution import ExecutionContext, UnitTimeout
from .executors import EXECUTORS
from .local import abandoned_units, execute_local
from .plan import GridIndex, Unit, batch_keys, grid_keys, plan_units
from .worker import CellFailure, UnitResult, Worker

__all__ = ["EXECUTORS", "CellFailure", "ExecutionContext", "GridIndex", "RunSummary", "Unit", "UnitResult",
           "UnitTimeout", "Worker", "abandoned_units", "batch_keys", "execute_local", "grid_keys", "plan_units",
           "run_grid", "summary_table"]
