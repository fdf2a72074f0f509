"""Progress bars on stderr (rich): attack units, then cells."""

from __future__ import annotations

import sys
from typing import Any


class _Bar:
    def __init__(self, progress: Any = None, units: Any = None, cells: Any = None):
        self.progress, self.units, self.cells = progress, units, cells

    def advance(self, n_cells: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.units, 1)
            self.progress.advance(self.cells, n_cells)


class _progress:
    """Rich progress bars on stderr, one per stage: attack units, then cells (defences + scores)."""

    def __init__(self, enabled: bool | None, units: int, cells: int):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.units, self.cells = units, cells
        self.progress = None

    def __enter__(self) -> _Bar:
        if not self.enabled:
            return _Bar()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.progress.__enter__()
        units = self.progress.add_task("attacks (metric x attack x batch)", total=self.units)
        cells = self.progress.add_task("cells (defences + scores)", total=self.cells)
        return _Bar(self.progress, units, cells)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
