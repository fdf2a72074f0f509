"""`executor: ray` gives the local runner's table row for row, survives a killed worker, and resumes."""

from __future__ import annotations

import gc
import os
import re
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from iqadef.config.registry import load_run_config
from iqadef.core.dataset import Dataset
from iqadef.core.errors import ConfigError, IqadefError
from iqadef.execute import ExecutionContext, UnitTimeout, run_grid

GRID = """
dataset: {{images: {images}}}
output: {output}
executor: {executor}
batch_size: 2
seed: 5
examples: 1
metrics: [toy-metric, toy-nan]
attacks: {attacks}
defences: [no-defence, toy-blur, toy-noise-defence]
ray: {{num_cpus: 1, max_restarts: 2, max_task_retries: 2}}
"""
ATTACKS = "[toy-sign, toy-noise]"
CELLS = 6 * 2 * 2 * 3


def config(tmp_path: Path, images: Path, registry, output: str, executor: str, attacks: str = ATTACKS):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(images=images, output=output, executor=executor, attacks=attacks))
    return load_run_config(path, plugins=registry)


def context(cfg, registry) -> ExecutionContext:
    return ExecutionContext(cfg, Dataset(cfg.images), cfg.output, torch.device("cpu"), registry)


def table(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def cache_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "cache").rglob("*.png"))}


def wait_for_free_cpus(ray, cpus: float, seconds: float = 60) -> float:
    """Ray reports freed resources asynchronously; wait (bounded) until the actors' CPUs are back."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        free = ray.available_resources().get("CPU", 0)
        if free >= cpus:
            return free
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0)


def ok_cells(run_dir: Path) -> int:
    """Successful cells in a run's store (read-only, beside the run that holds it open)."""
    con = sqlite3.connect(f"file:{run_dir / 'results.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM cells WHERE status = 'ok'").fetchone()[0]
    finally:
        con.close()


# -- needs a running Ray instance --------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_ray_table_equals_the_local_table_row_for_row(tmp_path, image_dir, ray_registry, local_ray):
    local = run_grid(config(tmp_path, image_dir, ray_registry, "local", "local"), plugins=ray_registry, progress=False)
    remote = run_grid(config(tmp_path, image_dir, ray_registry, "ray", "ray"), plugins=ray_registry, progress=False)
    a, b = table(local.run_dir), table(remote.run_dir)
    assert len(b) == CELLS == remote.computed and remote.failed == local.failed > 0  # toy-nan fails its cells
    assert (b.loc[b["metric"] == "toy-metric", "status"] == "ok").all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert cache_files(local.run_dir) == cache_files(remote.run_dir)  # the same adversarial PNGs, bit for bit
    assert wait_for_free_cpus(local_ray, 2) == 2  # every actor was released


@pytest.mark.ray
@pytest.mark.slow
def test_a_pool_of_actors_per_metric_shares_the_units_and_gives_the_local_table(
    tmp_path, image_dir, ray_registry, local_ray
):
    folder = tmp_path / "pids"
    folder.mkdir()
    attacks = f"[toy-sign, {{name: toy-pid-note, folder: {folder}}}]"
    local = run_grid(
        config(tmp_path, image_dir, ray_registry, "local", "local", attacks), plugins=ray_registry, progress=False
    )
    for note in folder.iterdir():
        note.unlink()
    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray", attacks)
    cfg.metrics = cfg.metrics[:1]  # one metric: without a pool, one actor would do all the work
    cfg.ray = {"num_cpus": 1, "actors_per_metric": 2}
    remote = run_grid(cfg, plugins=ray_registry, progress=False)
    workers = {int(note.name) for note in folder.iterdir()}
    assert len(workers) == 2 and os.getpid() not in workers  # both actors of the pool computed units
    a = table(local.run_dir)
    pd.testing.assert_frame_equal(
        a[a["metric"] == "toy-metric"].reset_index(drop=True), table(remote.run_dir), check_exact=True
    )
    assert wait_for_free_cpus(local_ray, 2) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_process_is_restarted_and_its_unit_retried(tmp_path, image_dir, ray_registry, local_ray):
    marker = tmp_path / "crashed"
    attacks = f"[toy-sign, {{name: toy-crash-once, marker: {marker}}}]"
    marker.write_text("the local run must not crash")
    local = run_grid(
        config(tmp_path, image_dir, ray_registry, "local", "local", attacks), plugins=ray_registry, progress=False
    )
    marker.unlink()
    remote = run_grid(
        config(tmp_path, image_dir, ray_registry, "ray", "ray", attacks), plugins=ray_registry, progress=False
    )
    assert marker.exists(), "the crash-once attack never ran in a Ray worker"
    crashed_pid = int(marker.read_text())
    assert crashed_pid != os.getpid()  # it killed a worker, not the driver
    b = table(remote.run_dir)
    assert len(b) == CELLS and not b.duplicated(["metric", "attack", "defence", "image"]).any()
    pd.testing.assert_frame_equal(table(local.run_dir), b, check_exact=True)
    assert wait_for_free_cpus(local_ray, 2) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_a_unit_past_unit_timeout_stops_the_run_and_a_resume_gives_the_local_table(
    tmp_path, image_dir, ray_registry, local_ray
):
    """``unit_timeout`` means what it means locally (execute/execution.py): the run stops with one line
    naming the unit, the units finished before it are kept, the stuck actor is killed."""
    marker = tmp_path / "hung"
    attacks = f"[toy-sign, {{name: toy-hang-once, marker: {marker}}}]"
    marker.write_text("the local run must not hang")
    local = run_grid(
        config(tmp_path, image_dir, ray_registry, "local", "local", attacks), plugins=ray_registry, progress=False
    )
    marker.unlink()
    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray", attacks)
    cfg.unit_timeout = 15.0  # far above a toy unit, even on a loaded machine; the hang lasts 600 s
    with pytest.raises(
        UnitTimeout,
        match=r"^unit \d/1/\d \(metric 'toy-(?:metric|nan)', attack 'toy-hang-once.*\) "
        r"did not finish within unit_timeout: 15 s; its Ray worker was stopped\. "
        r"The run stopped; the \d+ unit\(s\) finished before it are kept\.",
    ):
        run_grid(cfg, plugins=ray_registry, progress=False)
    assert marker.exists(), "the hang-once attack never ran in a Ray worker"
    assert wait_for_free_cpus(local_ray, 2) == 2  # the stuck actor was killed, and the others
    stored = ok_cells(cfg.output)
    resumed = run_grid(cfg, plugins=ray_registry, progress=False)  # the marker is there: no hang now
    assert resumed.skipped == stored and resumed.computed == CELLS - stored
    pd.testing.assert_frame_equal(table(local.run_dir), table(resumed.run_dir), check_exact=True)


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_ray_run_resumes_to_the_local_table(tmp_path, image_dir, ray_registry, local_ray):
    local = run_grid(config(tmp_path, image_dir, ray_registry, "local", "local"), plugins=ray_registry, progress=False)

    class Stop(Exception):
        pass

    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")

    def stop_after(n):
        # Units complete in Ray's order, and toy-nan's units (failed cells, retried on resume) may all come
        # first: stop only once a successful cell is stored, so the resume has something to skip.
        if n >= 3 and ok_cells(cfg.output) > 0:
            raise Stop

    with pytest.raises(Stop):
        run_grid(cfg, plugins=ray_registry, progress=False, after_unit=stop_after)
    stored_ok = ok_cells(cfg.output)
    gc.collect()  # the abandoned stream's actors are killed when it is collected
    assert wait_for_free_cpus(local_ray, 2) == 2
    resumed = run_grid(cfg, plugins=ray_registry, progress=False)
    assert resumed.skipped == stored_ok > 0 and resumed.computed == CELLS - resumed.skipped
    pd.testing.assert_frame_equal(table(local.run_dir), table(resumed.run_dir), check_exact=True)


# -- checks done before Ray starts ---------------------------------------------------------------------
def test_unpicklable_plugin_is_named_in_a_clear_error(tmp_path, image_dir, ray_registry):
    pytest.importorskip("ray")
    from iqadef.execute.ray import execute_ray

    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    cfg.defences[1].handle = threading.Lock()  # e.g. a lock or open file made in __init__
    with pytest.raises(ConfigError, match=r"defences\[1\] 'toy-blur' cannot be sent to a Ray worker"):
        execute_ray(context(cfg, ray_registry), [])


def test_an_unpicklable_certified_defence_is_named_in_one_line(tmp_path, image_dir, ray_registry):
    pytest.importorskip("ray")
    from iqadef.execute.ray import execute_ray

    path = tmp_path / "certified.yaml"
    path.write_text(
        GRID.format(images=image_dir, output="ray", executor="ray", attacks=ATTACKS) + "certified: [median-smoothing]\n"
    )
    cfg = load_run_config(path, plugins=ray_registry)
    cfg.certified[0].handle = threading.Lock()
    with pytest.raises(ConfigError) as caught:
        execute_ray(context(cfg, ray_registry), [])
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(
        rf"{re.escape(str(path))}: certified\[0\] 'median-smoothing' cannot be sent to a Ray "
        r"worker \(TypeError: .*lock.*\)\. Plugins must be plain picklable objects until load\(\).*",
        message,
    )


def test_an_unpicklable_score_plugin_is_named(tmp_path, image_dir, ray_registry):
    pytest.importorskip("ray")
    from iqadef import ImageScore
    from iqadef.execute.ray import check_picklable

    class LockedScore(ImageScore):  # defined in a function: pickled by value, with its class attributes
        name = "toy-locked-score"
        lock = threading.Lock()

        def compute(self, cells):
            return {}

    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    with pytest.raises(ConfigError, match=r"the score plugin 'toy-locked-score' cannot be sent to a Ray worker"):
        check_picklable(cfg, [LockedScore])


@pytest.mark.parametrize(
    "ray_options, message",
    [
        ("{num_gpu: 1}", r"ray.num_gpu: unknown key.*num_gpus"),
        ("{num_cpus: -1}", r"ray.num_cpus: -1 must be a number >= 0"),
        ("{in_flight: 0}", r"ray.in_flight: 0 must be an integer >= 1"),
        ("{actors_per_metric: 1.5}", r"ray.actors_per_metric: 1.5 must be an integer >= 1"),
        ("{address: 5}", r"ray.address: must be"),
    ],
)
def test_bad_ray_options_are_refused_with_the_key(tmp_path, image_dir, ray_registry, ray_options, message):
    pytest.importorskip("ray")
    from iqadef.execute.ray import execute_ray

    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    cfg.ray = yaml_mapping(ray_options)
    with pytest.raises(ConfigError, match=message):
        execute_ray(context(cfg, ray_registry), [])


def test_missing_ray_says_how_to_install_it(tmp_path, image_dir, ray_registry, monkeypatch):
    from iqadef.execute.ray import execute_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    with pytest.raises(ConfigError, match=r"pip install iqadef\[ray\]"):
        execute_ray(context(cfg, ray_registry), [])


def test_fractional_gpus_and_defaults():
    pytest.importorskip("ray")
    from iqadef.config.registry import RayOptions

    opts = RayOptions.parse({"num_gpus": 0.25, "address": "auto"})
    assert opts.gpus_per_actor("cuda") == 0.25 and opts.address == "auto"
    default = RayOptions.parse(None)
    assert default.gpus_per_actor("cuda:1") == 1.0 and default.gpus_per_actor("cpu") == 0.0
    assert (default.num_cpus, default.max_restarts, default.max_task_retries) == (1.0, 3, 3)
    assert default.actors_per_metric == 1 and RayOptions.parse({"actors_per_metric": 4}).actors_per_metric == 4


def yaml_mapping(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


@pytest.mark.ray
@pytest.mark.slow
def test_plugin_the_worker_cannot_import_gives_a_clear_error(tmp_path, image_dir, ray_registry, local_ray, monkeypatch):
    import types

    import toy_plugins

    ghost = types.ModuleType("iqadef_ghost_plugins")  # importable here only, like a plugin missing on a node

    class GhostBlur(toy_plugins.ToyBlur):
        """A defence whose module does not exist in the Ray workers."""

        name = "toy-ghost"

    GhostBlur.__module__, GhostBlur.__qualname__ = ghost.__name__, "GhostBlur"  # pickled by reference
    ghost.GhostBlur = GhostBlur
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    cfg.defences[1] = GhostBlur()
    with pytest.raises(IqadefError, match=r"cannot rebuild the plugins.*iqadef_ghost_plugins.*every node"):
        run_grid(cfg, plugins=ray_registry, progress=False)
    gc.collect()
    assert wait_for_free_cpus(local_ray, 2) == 2


@pytest.mark.ray
def test_more_gpus_than_the_cluster_has_is_refused(tmp_path, image_dir, ray_registry, local_ray):
    cfg = config(tmp_path, image_dir, ray_registry, "ray", "ray")
    cfg.ray = {"num_gpus": 0.5}
    with pytest.raises(ConfigError, match=r"ray.num_gpus: each actor asks for 0.5 GPU, but the Ray cluster has 0"):
        run_grid(cfg, plugins=ray_registry, progress=False)
    assert local_ray.is_initialized()  # a Ray instance the run did not start is left running
