"""Executing a plan: units computed and written (config -> plan -> **execute** -> store).

* :mod:`.worker` - computes one unit over its seams: :mod:`.sandbox` (every plugin call: inputs sealed,
  outputs checked against the contract, errors into failed cells), :mod:`.caches` (the clean side, the
  adversarial images), :mod:`.rows` (the one row builder), :mod:`.smoothed` (certified cells);
* :mod:`.execution` - the executors' contract (:class:`ExecutionContext`, ``unit_timeout``);
  :mod:`.executors` - the table of executors by name: :mod:`.local` and :mod:`.ray`;
* :mod:`.driver` - :func:`run_grid`: plans (:mod:`iqadef.plan`), drives an executor, is the only writer of
  the run folder and the store (:mod:`iqadef.store.results`), exports the tables;
* :mod:`.progress` - progress bars; :mod:`.recorded` - a finished run read back; :mod:`.verify` -
  ``iqadef verify``: recompute stored cells and compare.
"""

from __future__ import annotations

from iqadef.execute.driver import RunSummary, run_grid, summary_table
from iqadef.execute.execution import ExecutionContext, UnitTimeout
from iqadef.execute.executors import EXECUTORS
from iqadef.execute.local import abandoned_units, execute_local
from iqadef.execute.worker import CellFailure, UnitResult, Worker
from iqadef.plan.grid import GridIndex, Unit, batch_keys, grid_keys, plan_units

__all__ = [
    "EXECUTORS",
    "CellFailure",
    "ExecutionContext",
    "GridIndex",
    "RunSummary",
    "Unit",
    "UnitResult",
    "UnitTimeout",
    "Worker",
    "abandoned_units",
    "batch_keys",
    "execute_local",
    "grid_keys",
    "plan_units",
    "run_grid",
    "summary_table",
]
