"""The local executor: computes units in this process, one at a time, each within ``unit_timeout``
(in a daemon thread, so a hanging plugin stops the run with a clear message instead of stalling it)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import torch

from iqadef.execute.execution import ExecutionContext, UnitTimeout, timeout_error
from iqadef.execute.worker import UnitResult, Worker
from iqadef.plan.grid import Unit
from iqadef.store.results import ArtifactReader

#: Unit threads left computing when their run stopped (a unit past ``unit_timeout``, Ctrl-C mid-unit).
_ABANDONED: list[threading.Thread] = []


def abandoned_units() -> bool:
    """Whether a unit thread is still computing after its run stopped. The process must then end with
    ``os._exit``: a thread busy in torch while the interpreter shuts down aborts it ("terminate called
    without an active exception", exit status 134) instead of exiting with the run's status."""
    return any(thread.is_alive() for thread in _ABANDONED)


def execute_local(context: ExecutionContext, units: list[Unit]) -> Iterator[tuple[Unit, UnitResult]]:
    """Compute ``units`` one after another in a daemon thread with one :class:`Worker` (this process's
    plugins; its clean side is reused by the batch's attacks); wait at most ``unit_timeout`` s for each.

    A unit past its time stops the run with :class:`UnitTimeout` naming the unit and the plugin call it
    was in (``Worker.activity``). Python cannot stop a thread, so the stuck one is left behind
    (:func:`abandoned_units`; the CLI then exits with ``os._exit``); it writes nothing (the driver is the
    only writer), and every unit yielded before is stored. A thread with no unit to do is joined, so its
    torch state is released before the interpreter exits.
    """
    lookup = ArtifactReader.of_run(context.run_dir) if context.cached else (lambda key: None)
    worker = Worker(context.config, context.dataset, context.run_dir, lookup, context.device, context.plugins)
    worker.on_cells = context.on_cells
    return _serve(worker, units, context)


def _serve(worker: Worker, units: list[Unit], context: ExecutionContext) -> Iterator[tuple[Unit, UnitResult]]:
    timeout = context.timeout
    if not units:
        return
    requests: queue.Queue = queue.Queue()
    replies: queue.Queue = queue.Queue()
    threads = torch.get_num_threads()

    def serve() -> None:
        torch.set_num_threads(threads)  # the driver's: float sums add up in the same order
        while (unit := requests.get()) is not None:
            try:
                replies.put((worker.compute(unit), None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the driver's thread
                replies.put((None, exc))

    thread = threading.Thread(target=serve, name="iqadef-units", daemon=True)
    thread.start()
    busy = False  # a unit was handed to the thread and has not come back
    try:
        for done, unit in enumerate(units):
            requests.put(unit)
            busy = True
            started = time.monotonic()
            while True:
                left = None if timeout is None else timeout - (time.monotonic() - started)
                if left is not None and left <= 0:
                    doing = (
                        f"it was running {worker.activity}"
                        if worker.activity
                        else f"last plugin call: {worker.last_activity}"
                        if worker.last_activity
                        else "it had not called a plugin yet"
                    )
                    raise timeout_error(context, worker.batches, unit, done, doing, "Fix or remove that plugin")
                try:
                    result, error = replies.get(timeout=0.5 if left is None else min(0.5, left))
                    break
                except queue.Empty:
                    continue
            busy = False
            if error is not None:
                raise error
            yield unit, result
    finally:
        requests.put(None)  # the thread ends after its unit (a stuck one never does: it is a daemon)
        if busy:
            _ABANDONED.append(thread)
        else:
            thread.join()


__all__ = ["UnitTimeout", "abandoned_units", "execute_local"]
