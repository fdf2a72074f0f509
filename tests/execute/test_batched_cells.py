"""The worker's per-unit batching (issue 16): progress per finished cell, measures and metric forwards
batched across defences with the results of per-defence calls."""

from __future__ import annotations

import threading
from pathlib import Path

from iqadef.config.registry import load_run_config
from iqadef.core.dataset import Dataset
from iqadef.execute.worker import Worker
from iqadef.plan.grid import plan_units

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
examples: 1
metrics: [toy-metric]
attacks: [toy-sign]
defences: {defences}
"""


def make_worker(
    tmp_path: Path,
    image_dir: Path,
    registry,
    defences: str = "[no-defence, toy-blur, toy-explode]",
    output: str = "run",
    extra: str = "",
):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(images=image_dir, output=output, defences=defences) + extra)
    cfg = load_run_config(path, plugins=registry)
    dataset = Dataset(cfg.images, cfg.mos, max_side=cfg.max_side)
    worker = Worker(cfg, dataset, tmp_path / output, lambda key: None, cfg.torch_device(), registry)
    return worker, plan_units(cfg, dataset, set())


def test_on_cells_reports_each_defence_as_it_finishes_from_the_computing_thread(tmp_path, image_dir, toy_registry):
    worker, units = make_worker(tmp_path, image_dir, toy_registry)
    calls: list[tuple[int, int, str]] = []  # (cells, rows already in the result, thread)
    worker.on_cells = lambda n: calls.append(
        (n, len(current[0].rows) if current else -1, threading.current_thread().name)
    )
    current: list = []
    total = 0
    for unit in units:
        calls.clear()
        result_holder: dict = {}

        def compute(unit=unit):
            result_holder["r"] = worker.compute(unit)

        thread = threading.Thread(target=compute, name="unit-thread")
        thread.start()
        thread.join()
        rows = result_holder["r"].rows
        assert sum(n for n, _, _ in calls) == len(rows) > 0
        assert {name for _, _, name in calls} == {"unit-thread"}
        assert len(calls) >= 2  # not one call at the end: the exploding defence's cells come on their own
        assert any(r["status"] == "failed" for r in rows) and any(r["status"] == "ok" for r in rows)
        total += len(rows)
    assert total == 6 * 3


def test_on_cells_counts_every_cell_when_the_attack_fails(tmp_path, image_dir, toy_registry):
    worker, units = make_worker(tmp_path, image_dir, toy_registry, defences="[no-defence, toy-blur]")
    worker.config.attacks[0].attack.run = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("attack down"))
    seen: list[int] = []
    worker.on_cells = seen.append
    result = worker.compute(units[0])
    assert all(r["status"] == "failed" for r in result.rows)
    assert sum(seen) == len(result.rows) == 2 * 2


def _table(tmp_path, image_dir, registry, output, extra="", monkeypatch=None, alone=False, calls=None):
    import pandas as pd

    from iqadef.execute import run_grid

    path = tmp_path / f"{output}.yaml"
    path.write_text(
        GRID.format(
            images=image_dir,
            output=output,
            defences="[no-defence, toy-blur, toy-noise-defence, toy-explode, toy-blur-2]",
        )
        .replace("toy-blur-2", "{name: toy-noise-defence, params: {sigma: 0.05}}")
        .replace("attacks: [toy-sign]", "attacks: [toy-sign, toy-noise]")
        + extra
    )
    cfg = load_run_config(path, plugins=registry)
    if alone:
        monkeypatch.setattr(Worker, "_groupable", lambda self, unit, todo, shared: [])
    if calls is not None:
        metric = cfg.metrics[0]
        real = type(metric).score
        monkeypatch.setattr(
            type(metric), "score", lambda self, images: calls.append(images.shape[0]) or real(self, images)
        )
    summary = run_grid(cfg, plugins=registry, progress=False)
    monkeypatch.undo()
    df = pd.read_parquet(summary.run_dir / "results.parquet").drop(columns=["image_path"])
    return df.sort_values(["attack", "defence", "image"]).reset_index(drop=True)


def test_defences_computed_together_give_the_table_of_one_by_one(tmp_path, image_dir, toy_registry, monkeypatch):
    import pandas as pd

    one_by_one = _table(tmp_path, image_dir, toy_registry, "alone", monkeypatch=monkeypatch, alone=True)
    calls: list[int] = []
    grouped = _table(tmp_path, image_dir, toy_registry, "grouped", monkeypatch=monkeypatch, calls=calls)
    assert (one_by_one["status"] == "failed").sum() == (grouped["status"] == "failed").sum() == 6 * 2
    pd.testing.assert_frame_equal(one_by_one, grouped)
    assert max(calls) == 2  # metric_batch null: one defence's batch per call
    calls_batched: list[int] = []
    batched = _table(
        tmp_path, image_dir, toy_registry, "batched", "metric_batch: 6\n", monkeypatch=monkeypatch, calls=calls_batched
    )
    pd.testing.assert_frame_equal(one_by_one, batched, check_exact=False, rtol=1e-6, atol=1e-7)
    assert max(calls_batched) == 6 and len(calls_batched) < len(calls)


def test_metric_batch_is_validated(tmp_path, image_dir, toy_registry):
    import pytest

    from iqadef.core.errors import ConfigError

    worker, _ = make_worker(tmp_path, image_dir, toy_registry, output="ok", extra="metric_batch: 32\n")
    assert worker.config.metric_batch == 32
    with pytest.raises(ConfigError, match="metric_batch"):
        make_worker(tmp_path, image_dir, toy_registry, output="bad", extra="metric_batch: 0\n")


def test_a_unit_leaves_no_images_in_reference_cycles(tmp_path, image_dir, toy_registry):
    """A unit's CellGroup and its CellBatches refer to each other; left as a cycle they kept every D(x_a) and
    its measures until a full garbage collection, and a run's memory grew with every unit."""
    import gc

    import torch

    worker, units = make_worker(tmp_path, image_dir, toy_registry, defences="[no-defence, toy-blur]")
    gc.collect()
    gc.disable()
    try:
        for unit in units:
            assert all(r["status"] == "ok" for r in worker.compute(unit).rows)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, torch.Tensor) or type(o).__name__ in ("CellBatch", "CellGroup")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_each_image_pair_is_measured_once_per_batch_across_attacks(tmp_path, image_dir, toy_registry, monkeypatch):
    """x vs D(x) is the same pair for every attack of an image batch, also when D resizes (x is then compared
    with D(x) resized back to x's size, a tensor of the memo): measured for the batch's first attack only."""
    import iqadef.plugins.scores._measures as measures

    measured: list[tuple[int, int]] = []
    real = measures.pair_measures

    def counting(pairs, *args, **kwargs):
        measured.extend((id(a), id(b)) for a, b in pairs)
        return real(pairs, *args, **kwargs)

    monkeypatch.setattr(measures, "pair_measures", counting)
    defences = "[no-defence, toy-blur, {name: resize, params: {scale: 0.5}}]"
    path = tmp_path / "two-attacks.yaml"
    text = GRID.format(images=image_dir, output="run", defences=defences)
    path.write_text(text.replace("attacks: [toy-sign]", "attacks: [toy-sign, fgsm]"))
    cfg = load_run_config(path, registry=toy_registry)
    dataset = Dataset(cfg.images, cfg.mos, max_side=cfg.max_side)
    worker = Worker(cfg, dataset, tmp_path / "run", lambda key: None, cfg.torch_device(), toy_registry)
    units = plan_units(cfg, dataset, set())
    per_unit = []
    for unit in units:
        measured.clear()
        assert all(r["status"] == "ok" for r in worker.compute(unit).rows)
        per_unit.append((unit.batch, len(measured), len(set(measured))))
    assert all(n == distinct for _, n, distinct in per_unit)  # no pair twice within a unit
    first = {}
    for batch, n, _ in per_unit:
        # first attack of a batch: x vs x_a, then x vs D(x), x vs D(x_a), x_a vs D(x_a), D(x) vs D(x_a) per
        # defence; a later attack: x vs D(x) is memoised (it was measured again for the resizing defence)
        expected = 1 + 3 * 4 if batch not in first else 1 + 3 * 3
        first.setdefault(batch, n)
        assert n == expected, per_unit
