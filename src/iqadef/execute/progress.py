"""Progress on stderr (rich): the attack units, and the cells, which advance one defence at a time.

The cells bar is fed by :attr:`Worker.on_cells <iqadef.execute.worker.Worker.on_cells>` as cells finish
inside a unit (from the unit's thread), so it moves and its time estimate (rich's ``TimeRemainingColumn``,
from the cells' rate) works from the first minutes; an executor without per-cell reports (Ray) advances
it by the unit's rows when the unit comes back. The counts are kept whether or not a bar is drawn.

When stderr is not a terminal (``iqadef run registry.yaml > log 2>&1``) a bar would show only its final
state, so a plain line (units, cells, elapsed, eta) is printed every :data:`PLAIN_INTERVAL` seconds instead.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 30.0


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
    """Progress on stderr, one count per stage: attack units, then cells (defences + scores).

    ``enabled`` False: nothing. True or None: rich bars on a terminal (or on ``console``: tests), plain lines
    every :data:`PLAIN_INTERVAL` seconds otherwise. ``what`` starts each plain line (``run``, ``verify``)."""

    def __init__(
        self,
        enabled: bool | None,
        units: int,
        cells: int,
        console: Any = None,
        *,
        what: str = "progress",
        unit_label: str = "attacks (metric x attack x batch)",
        cell_label: str = "cells (defences + scores)",
    ):
        self.enabled = enabled is not False
        self.plain = self.enabled and console is None and not sys.stderr.isatty()
        self.units, self.cells = units, cells
        self.console = console
        self.what, self.unit_label, self.cell_label = what, unit_label, cell_label
        self.progress = None
        self.bar: _Bar | None = None
        self._stop = threading.Event()
        self._lines: threading.Thread | None = None

    def __enter__(self) -> _Bar:
        if not self.enabled or self.plain:
            self.bar = _Bar()
            if self.plain:
                self._lines = threading.Thread(
                    target=self._print_lines, args=(time.monotonic(),), daemon=True, name="iqadef-progress"
                )
                self._lines.start()
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
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console or Console(stderr=True),
            transient=False,
            speed_estimate_period=600.0,
        )
        self.progress.__enter__()
        units = self.progress.add_task(self.unit_label, total=self.units)
        cells = self.progress.add_task(self.cell_label, total=self.cells)
        self.bar = _Bar(self.progress, units, cells)
        return self.bar

    def _print_lines(self, start: float) -> None:
        while not self._stop.wait(PLAIN_INTERVAL):
            print(self.plain_line(time.monotonic() - start), file=sys.stderr, flush=True)

    def plain_line(self, elapsed: float) -> str:
        """``progress: 3/10 units, 45/120 cells (38%), 2 min elapsed, eta 3 min`` (eta from the cells' rate)."""
        bar = self.bar or _Bar()
        done, total = bar.cells_done, self.cells
        share = f" ({100 * done / total:.0f}%)" if total else ""
        eta = _duration(elapsed / done * (total - done)) if done else "unknown"
        return (
            f"{self.what}: {bar.units_done}/{self.units} units, {done}/{total} cells{share}, "
            f"{_duration(elapsed)} elapsed, eta {eta}"
        )

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._lines is not None:
            self._lines.join()
        if self.progress is not None:
            self.progress.__exit__(*exc)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
