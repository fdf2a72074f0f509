"""Run the grid's work units on a Ray cluster (``executor: ray``), with the local runner's results.

Why it is built this way:

* **One actor per metric** (``actors_per_metric: N`` for a pool of N). An actor wraps a
  :class:`~iqadef.execute.worker.Worker`, so the metric's weights are loaded once per actor and the clean
  side (f(x), D(x), f(D(x))) of a (metric, batch) is reused by every attack of that batch, exactly as in
  the local runner: a pool splits a metric's units by image batch (batch ``b`` goes to actor
  ``b mod N``), so each batch stays on one actor.
* **Deterministic.** An actor's units are sent to it in the planned order (a Ray actor runs its
  calls one at a time, in submission order). Every random choice is seeded from the config, the unit
  and the images, never from the order of completion; torch's CPU thread count in the actor is set to
  the driver's (Ray sets ``OMP_NUM_THREADS=1`` in workers), so reductions add up in the same order.
* **The driver stays the only writer.** Results come back as :class:`~iqadef.execute.worker.UnitResult`
  (rows + PNG bytes) as they complete (``ray.wait``) with a bounded number in flight per actor;
  ``run_grid`` writes them, so resume works exactly as with the local runner.
* **Fault tolerant.** Actors are created with ``max_restarts`` / ``max_task_retries``: if a worker
  process dies (OOM killer, SIGKILL, node loss) Ray restarts it and re-runs the unit that was in flight;
  units are pure functions of the config, so the retried unit gives the same rows.
* **A stuck unit stops the run** (``unit_timeout``, the same meaning as for the local executor:
  execute/execution.py). An actor runs its units in submission order, so the oldest unfinished unit of
  an actor is the one running; its clock starts when the actor is ready (``ready()`` answered) or its
  previous unit came back. Past ``unit_timeout`` the run stops with one line naming the unit, every actor
  is killed (a stuck thread cannot be stopped otherwise) and the units finished before it are kept.
* **Same plugins in the actor.** Plugins are plain objects until ``load()``, so the config is pickled
  (cloudpickle; classes by reference to their module) and unpickled inside the actor after the
  driver's ``sys.path`` entries have been added there. Third-party plugins must be installed in the
  same environment on every node. The image-score classes of the driver's plugin manager are passed
  along, so the actor computes the same score columns.

Cached adversarial images are looked up in a snapshot of the store's artifact table taken when the
run starts; their files are read from the run directory, which must be on a filesystem shared by all
nodes (otherwise a node that cannot read them recomputes them - same result, more time).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from iqadef.analysis.scores import image_score_classes
from iqadef.config.registry import RayOptions, RunConfig
from iqadef.core.errors import ConfigError, IqadefError
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.core.weights import fetch_missing
from iqadef.execute.execution import ExecutionContext, UnitTimeout, timeout_error
from iqadef.execute.worker import Worker
from iqadef.store.results import artifact_table


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor: ray needs Ray; install it with `pip install iqadef[ray]` "
            '(or `pip install "ray>=2.9"`), or use `executor: local`'
        ) from None
    return ray


# -- what is sent to the actors --------------------------------------------------------------------
def _plugins(config: RunConfig, scores: list[type]) -> list[tuple[str, Any]]:
    """What the actors are sent, every plugin kind of the run by the registry key that names it."""
    return (
        [(f"metrics[{i}] {m.label!r}", m) for i, m in enumerate(config.metrics)]
        + [(f"attacks[{i}] {e.label!r}", e.attack) for i, e in enumerate(config.attacks)]
        + [(f"defences[{i}] {d.label!r}", d) for i, d in enumerate(config.defences)]
        + [(f"certified[{i}] {c.label!r}", c) for i, c in enumerate(config.certified)]
        + [(f"the score plugin {cls.name!r}", cls) for cls in scores]
    )


def check_picklable(config: RunConfig, scores: list[type] | None = None) -> None:
    """Every plugin (metrics, attacks, defences, certified defences and the image-score plugins) must
    pickle: it is rebuilt in the Ray worker. Name the one that does not."""
    from ray import cloudpickle

    for where, plugin in _plugins(config, scores or []):
        try:
            cloudpickle.dumps(plugin)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing to the user
            raise ConfigError(
                f"{config.source}: {where} cannot be sent to a Ray worker ({type(exc).__name__}: "
                f"{_first_line(exc)}). Plugins must be plain picklable objects until load(): build models, "
                f"open files and locks in setup(), or use `executor: local`"
            ) from None


def score_classes(plugins: InstalledPlugins | None) -> list[type]:
    return image_score_classes(plugins or installed_plugins())


class ScoreTable:
    """The part of a plugin manager (``InstalledPlugins``) a Worker uses (its image scores), rebuilt in the actor."""

    def __init__(self, classes: list[type]):
        self.by_kind = {"scores": {cls.name: SimpleNamespace(cls=cls) for cls in classes}}


def artifact_snapshot(run_dir: Path) -> dict[str, tuple[str, str]]:
    """The store's artifact table (key -> (relative path, sha256)) as it is when the run starts."""
    return artifact_table(run_dir)


def actor_device(device: str) -> torch.device:
    """The device inside an actor: Ray makes the GPU(s) it assigned visible as cuda:0..."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IqadefError(
                f"device: {device!r} but this Ray worker sees no GPU; give each actor one "
                f"with `ray: {{num_gpus: 1}}` (fractions such as 0.5 share a GPU)"
            )
        return torch.device("cuda")
    return torch.device(device)


class UnitActor:
    """Holds one metric's Worker in a Ray worker process; ``compute`` runs one unit."""

    def __init__(self, payload: bytes, sys_path: list[str], torch_threads: int):
        for entry in sys_path:  # appended, so the worker's own environment wins
            if entry not in sys.path and os.path.isdir(entry):
                sys.path.append(entry)
        torch.set_num_threads(torch_threads)
        from ray import cloudpickle

        try:
            config, dataset, run_dir, scores, artifacts = cloudpickle.loads(payload)
        except Exception as exc:  # noqa: BLE001
            raise IqadefError(
                f"the Ray worker on {os.uname().nodename} cannot rebuild the plugins "
                f"({type(exc).__name__}: {exc}); install the same iqadef and plugin packages in the "
                f"environment of every node"
            ) from None
        fetch_missing(config.plugins())  # a node without the driver's weight cache fetches them first
        self.worker = Worker(
            config, dataset, Path(run_dir), artifacts.get, actor_device(config.device), plugins=ScoreTable(scores)
        )  # type: ignore[arg-type]

    def ready(self) -> bool:
        """Answered once the actor is built: the driver starts its first unit's clock then."""
        return True

    def compute(self, unit: Any) -> Any:
        return self.worker.compute(unit)


# -- the driver side ---------------------------------------------------------------------------------
def _start(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False}
    if options.address:
        kwargs["address"] = options.address
    else:
        kwargs["num_cpus"] = options.local_cpus or os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise IqadefError(
            f"ray.address: cannot connect to the Ray cluster at {options.address!r} ({exc}); "
            f"check the address (`ray status` on the head node prints it), that this machine has the "
            f"cluster's auth token if Ray token authentication is on, or remove `address` to run "
            f"Ray here"
        ) from None
    return True


def _check_resources(ray: Any, options: RayOptions, gpus: float) -> None:
    total = ray.cluster_resources()
    for key, need in (("CPU", options.num_cpus), ("GPU", gpus)):
        if need > total.get(key, 0):
            name = "num_cpus" if key == "CPU" else "num_gpus"
            raise ConfigError(
                f"ray.{name}: each actor asks for {need:g} {key}, but the Ray cluster has "
                f"{total.get(key, 0):g}; lower `ray.{name}` or add nodes"
            )


def execute_ray(context: ExecutionContext, units: list) -> Iterator[tuple[Any, Any]]:
    """Compute ``units`` on Ray actors (one per metric); yield ``(unit, UnitResult)`` as they complete.

    The context's device (the driver's) is not used: each actor resolves ``config.device`` itself, because
    the driver may have no GPU while the workers do. Cells are counted per unit, by the driver.
    """
    config, dataset, output = context.config, context.dataset, context.run_dir
    ray = import_ray()
    options = RayOptions.parse(config.ray, f"{config.source}: ray")
    scores = score_classes(context.plugins)
    check_picklable(config, scores)
    from ray import cloudpickle

    snapshot = artifact_snapshot(output) if context.cached else {}
    try:
        payload = cloudpickle.dumps((config, dataset, str(output), scores, snapshot))
    except Exception as exc:  # noqa: BLE001 - the plugins pickle (checked above): the dataset or the registry
        raise ConfigError(
            f"{config.source}: the run cannot be sent to a Ray worker ({type(exc).__name__}: "
            f"{_first_line(exc)}); use `executor: local`"
        ) from None
    threads = options.torch_threads or torch.get_num_threads()
    gpus = options.gpus_per_actor(config.device)
    labels = [m.label for m in config.metrics]
    batches = dataset.batches(config.batch_size)

    def timed_out(unit: Any, done: int) -> UnitTimeout:
        return timeout_error(
            context,
            batches,
            unit,
            done,
            "its Ray worker was stopped",
            "Run it with `executor: local` to see which plugin call hangs",
        )

    return _stream(ray, options, payload, units, threads, gpus, labels, forwarded_env(), context.timeout, timed_out)


#: Environment variables that change what a plugin does (weights folder, offline mode, plugin
#: selection); sent to the actors, whose processes otherwise get the environment of `ray start`.
FORWARDED_ENV = ("IQADEF_", "TORCH_HOME")


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def _stream(
    ray: Any,
    options: RayOptions,
    payload: bytes,
    units: list,
    threads: int,
    gpus: float,
    labels: list[str],
    env: dict[str, str],
    timeout: float | None = None,
    timed_out: Any = None,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(unit, result)`` as units complete; a unit that runs past ``timeout`` seconds stops the run
    with the error ``timed_out(unit, units done)`` (every actor is killed)."""
    started = _start(ray, options)
    actors: dict[tuple[int, int], Any] = {}  # (metric, replica) -> actor
    finished = 0  # units yielded
    try:
        _check_resources(ray, options, gpus)
        remote = ray.remote(UnitActor).options(
            num_cpus=options.num_cpus,
            num_gpus=gpus,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_task_retries,
            max_concurrency=1,
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )
        queues: dict[tuple[int, int], deque] = {}
        for unit in units:  # a batch always goes to the same replica, so its clean side is computed once
            queues.setdefault((unit.metric, unit.batch % options.actors_per_metric), deque()).append(unit)
        sys_path = [p for p in sys.path if p]
        flight: dict[tuple[int, int], deque] = {key: deque() for key in queues}  # (ref, unit), oldest first
        clock: dict[tuple[int, int], float | None] = {key: None for key in queues}  # when the oldest started
        pending: dict[Any, tuple[tuple[int, int], Any]] = {}  # unit refs and actor ready() refs (unit None)

        def start_actor(key: tuple[int, int]) -> None:
            # the payload (small: plugins are not loaded yet) is passed by value, not as a ray.put
            # reference, so a restarted actor can always be rebuilt from its creation task
            actors[key] = remote.remote(payload, sys_path, threads)
            clock[key] = None
            pending[actors[key].ready.remote()] = (key, None)
            submit(key)

        def submit(key: tuple[int, int]) -> None:
            while queues[key] and len(flight[key]) < options.in_flight:
                unit = queues[key].popleft()
                ref = actors[key].compute.remote(unit)
                pending[ref] = (key, unit)
                flight[key].append((ref, unit))

        def expired() -> tuple[int, int] | None:
            if timeout is None:
                return None
            now = time.monotonic()
            return next((key for key, t in clock.items() if t is not None and flight[key] and now - t > timeout), None)

        for key in queues:  # actors that do not fit yet wait for a finished one's resources
            start_actor(key)
        while pending:
            key = expired()
            if key is not None:  # the oldest unit of this actor is stuck: the run stops (the actors are killed)
                raise timed_out(flight[key][0][1], finished)
            wait = None
            if timeout is not None:
                waiting = [t + timeout - time.monotonic() for k, t in clock.items() if t is not None and flight[k]]
                wait = max(0.0, min(waiting + [1.0]))
            done, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            for ref in done:
                key, unit = pending.pop(ref)
                label = labels[key[0]]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise IqadefError(
                        f"the Ray actor of metric {label!r} is dead: {_first_line(exc)} (a killed worker "
                        f"is restarted {options.max_restarts} times, a unit retried {options.max_task_retries} "
                        f"times: `ray.max_restarts`, `ray.max_task_retries`); finished units are stored, run "
                        f"again to resume"
                    ) from None
                except ray.exceptions.RayTaskError as exc:
                    what = f"unit {unit.id}" if unit is not None else "the actor's start"
                    raise IqadefError(
                        f"{what} (metric {label!r}) failed in its Ray worker: {_first_line(exc)}"
                    ) from None
                if unit is None:  # the actor is built (ready() answered): its first unit starts now
                    clock[key] = time.monotonic()
                    continue
                if flight[key] and flight[key][0][0] == ref:
                    flight[key].popleft()
                else:  # cannot happen (an actor runs its units in order); keep the books right anyway
                    flight[key] = deque(item for item in flight[key] if item[0] != ref)
                clock[key] = time.monotonic() if flight[key] else None
                submit(key)
                if not queues[key] and not flight[key]:
                    ray.kill(actors.pop(key))  # frees its CPUs/GPUs for an actor still waiting
                    for ready in [r for r, (k, u) in pending.items() if k == key]:
                        del pending[ready]
                finished += 1
                yield unit, result
    finally:
        for actor in actors.values():
            ray.kill(actor)
        if started:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    found = next((line.strip() for line in reversed(lines) if "rror" in line), None)  # Ray puts the cause last
    found = found or (lines[0] if lines else type(exc).__name__)
    return found if len(found) <= 300 else found[:297] + "..."


__all__ = ["UnitActor", "execute_ray", "check_picklable", "artifact_snapshot"]
