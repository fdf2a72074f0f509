"""The executors by name (the registry's ``executor:``, ``iqadef run --executor``): each one is called
as ``executor(context, units)`` and yields ``(unit, UnitResult)`` (the contract: execute/execution.py).

Ray is imported only when ``executor: ray`` is chosen (an optional dependency).
"""

from __future__ import annotations

from typing import Iterator

from iqadef.core.errors import ConfigError
from iqadef.execute.execution import ExecutionContext, Executor
from iqadef.execute.local import execute_local
from iqadef.execute.worker import UnitResult
from iqadef.plan.grid import Unit


def _execute_ray(context: ExecutionContext, units: list[Unit]) -> Iterator[tuple[Unit, UnitResult]]:
    from iqadef.execute.ray import execute_ray  # optional dependency: only `executor: ray` needs Ray

    return execute_ray(context, units)


#: name -> executor.
EXECUTORS: dict[str, Executor] = {"local": execute_local, "ray": _execute_ray}


def executor_named(name: str) -> Executor:
    """The executor called ``name``; a ConfigError naming the known ones otherwise."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"executor: {name!r} is not an executor; use one of {', '.join(sorted(EXECUTORS))}") from None


__all__ = ["EXECUTORS", "executor_named"]
