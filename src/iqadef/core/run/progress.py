"""Progress on stderr (rich): the attack units, and the cells, which advance one defence at a time.

The cells bar is fed by :attr:`Worker.on_cells <iqadef.core.run.worker.Worker.on_cells>` as cells finish
inside a unit (from the unit's thread), so it moves and its time estimate (rich's ``TimeRemainingColumn``,
from the cells' rate) works from the first minutes; an executor without per-cell reports (Ray) advances
it by the unit's rows when the unit comes back. The counts are kept whether or not a bar is drawn.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


class _Bar:
    """What the driver and the worker report to. ``units_done`` and ``cells_done`` count even when no bar
    is drawn (``progress`` None)."""

    def __init__(self, progress: Any = None, units: Any = None, cells: Any = None):
        self.progress, self.units, self.cells = progress, units, cells
        self.units_done = 0
        self.cells_done = 0
        self._reported = 0  # cells reported per cell for the unit in flight
        self._lock = threading.Lock()

    def cell(self, n: int) -> None:
        """``n`` cells of the unit in flight are finished (called from the unit's thread)."""
        with self._lock:
            self._reported += n
            self.cells_done += n
        if self.progress is not None:
            self.progress.advance(self.cells, n)

    def unit(self, rows: int) -> int:
        """A unit came back with ``rows`` rows: the cells not reported one by one are counted now (returned)."""
        with self._lock:
            rest = max(0, rows - self._reported)
            self._reported = 0
            self.cells_done += rest
            self.units_done += 1
        if self.progress is not None:
            self.progress.advance(self.units, 1)
            if rest:
                self.progress.advance(self.cells, rest)
        return rest

    # the driver's former single call, kept for callers that report whole units
    def advance(self, n_cells: int) -> None:
        self.unit(n_cells)


class _progress:
    """Rich progress bars on stderr, one per stage: attack units, then cells (defences + scores).

    ``enabled`` None: only when stderr is a terminal. ``console``: where to draw (tests)."""

    def __init__(self, enabled: bool | None, units: int, cells: int, console: Any = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.units, self.cells = units, cells
        self.console = console
        self.progress = None
        self.bar: _Bar | None = None

    def __enter__(self) -> _Bar:
        if not self.enabled:
            self.bar = _Bar()
            return self.bar
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        # speed_estimate_period: the estimate follows the last 10 minutes of cells, not rich's 30 s
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=self.console or Console(stderr=True), transient=False,
                                 speed_estimate_period=600.0)
        self.progress.__enter__()
        units = self.progress.add_task("attacks (metric x attack x batch)", total=self.units)
        cells = self.progress.add_task("cells (defences + scores)", total=self.cells)
        self.bar = _Bar(self.progress, units, cells)
        return self.bar

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
