"""The executors' contract: what one is given (:class:`ExecutionContext`), what it yields, and the one
meaning of ``unit_timeout`` they share.

An executor is a callable ``executor(context, units)`` returning an iterator of ``(unit, UnitResult)``, one
per unit, in any order; the driver (execute/driver.py) is the only writer of what they return. Checks an
executor can make before any unit runs (its options, whether the plugins can be sent where they run) are
made when it is called, not when the iterator is first read. The executors by name: execute/executors.py.

``unit_timeout`` (docs/registry.md) means the same under every executor: a unit that runs past it **stops
the run** with :class:`UnitTimeout`, one line naming the unit (and, where the executor can see it, the plugin
call it was in); every unit finished before it is stored, so the next run resumes after it. A timeout is
not a result of the cells (a slow machine is not a broken plugin), so none is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from iqadef.config.registry import RunConfig
from iqadef.core.dataset import Dataset, ImageItem
from iqadef.core.errors import IqadefError
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute.worker import UnitResult
from iqadef.plan.grid import Unit, describe_unit


class UnitTimeout(IqadefError):
    """A unit ran past ``unit_timeout``: the run stops; finished units are kept."""


@dataclass
class ExecutionContext:
    """Everything an executor needs to compute a run's units."""

    config: RunConfig
    dataset: Dataset
    #: The run folder: its store's cached adversarial images are read from here (never written: the driver does).
    run_dir: Path
    #: The driver's device (Ray's actors resolve ``config.device`` themselves: the driver may have no GPU).
    device: torch.device
    #: The plugin manager whose image scores the cells get (None: the installed plugins).
    plugins: InstalledPlugins | None = None
    #: Read cached adversarial images from the run's store (``iqadef verify``: False, everything recomputed).
    cached: bool = True
    #: Called with the number of cells just finished, as they finish, from the thread computing them (an
    #: executor that cannot tell leaves it to the driver, which counts each unit's rows as it comes back).
    on_cells: Callable[[int], None] | None = None

    @property
    def timeout(self) -> float | None:
        """``unit_timeout`` in seconds (None: no limit)."""
        return self.config.unit_timeout


class Executor(Protocol):
    def __call__(self, context: ExecutionContext, units: list[Unit]) -> Iterator[tuple[Unit, UnitResult]]: ...


def timeout_error(
    context: ExecutionContext, batches: list[list[ImageItem]], unit: Unit, done: int, doing: str, how: str
) -> UnitTimeout:
    """The one line of a unit past ``unit_timeout``: which unit, what it was doing, what was kept and
    ``how`` to find or fix the plugin."""
    return UnitTimeout(
        f"{describe_unit(context.config, batches, unit)} did not finish within unit_timeout: {context.timeout:g} s; "
        f"{doing}. The run stopped; the {done} unit(s) finished before it are kept. {how}, or raise "
        f"`unit_timeout` in the registry (null: no limit), then run again to resume"
    )


Stream = Iterator[tuple[Unit, UnitResult]]

__all__ = ["ExecutionContext", "Executor", "Stream", "UnitTimeout", "timeout_error"]
