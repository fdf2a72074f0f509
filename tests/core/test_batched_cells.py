"""The worker's per-unit batching (issue 16): progress per finished cell, measures and metric forwards
batched across defences with the results of per-defence calls."""

from __future__ import annotations

import threading
from pathlib import Path

from iqadef.core.dataset import Dataset
from iqadef.core.registry import load_run_config
from iqadef.core.run.plan import plan_units
from iqadef.core.run.worker import Worker

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


def make_worker(tmp_path: Path, image_dir: Path, registry, defences: str = "[no-defence, toy-blur, toy-explode]",
                output: str = "run", extra: str = ""):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(images=image_dir, output=output, defences=defences) + extra)
    cfg = load_run_config(path, registry=registry)
    dataset = Dataset(cfg.images, cfg.mos, max_side=cfg.max_side)
    worker = Worker(cfg, dataset, tmp_path / output, lambda key: None, cfg.torch_device(), registry)
    return worker, plan_units(cfg, dataset, set())


def test_on_cells_reports_each_defence_as_it_finishes_from_the_computing_thread(tmp_path, image_dir, toy_registry):
    worker, units = make_worker(tmp_path, image_dir, toy_registry)
    calls: list[tuple[int, int, str]] = []  # (cells, rows already in the result, thread)
    worker.on_cells = lambda n: calls.append((n, len(current[0].rows) if current else -1,
                                              threading.current_thread().name))
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
