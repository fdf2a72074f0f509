"""Executors compute work units somewhere other than the driver process (see :mod:`.ray_executor`).

An executor takes the planned :class:`~iqadef.core.runner.Unit` list and yields ``(unit, UnitResult)``
pairs; :func:`~iqadef.core.runner.run_grid` stays the only writer of files and of the result store.
Nothing here imports Ray at import time, so the package works without the ``ray`` extra.
"""
