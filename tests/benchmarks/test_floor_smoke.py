"""benchmarks/floor.py --quick: the split of a tiny grid's wall time has every part, the parts add up to the
total, each call is counted once (nested calls count for the outer one) and the timers are removed after.

No timing assertions: speed is measured by the benchmark itself, not by tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT


def _floor_module():
    spec = importlib.util.spec_from_file_location("iqadef_bench_floor", ROOT / "benchmarks" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_split_nests_and_undoes():
    floor = _floor_module()
    split = floor.Split()

    class Box:
        def outer(self):
            return self.inner() + 1

        def inner(self):
            return 1

    with floor.Patches(split) as patches:
        patches.method(Box, "outer", "attack")
        patches.method(Box, "inner", "metric")
        assert Box().outer() == 2 and Box().inner() == 1
    assert split.calls == {"attack": 1, "metric": 1}  # inner inside outer counted for outer only
    assert not getattr(Box.outer, "__floor_timed__", False) and not getattr(Box.inner, "__floor_timed__", False)


@pytest.mark.slow
def test_quick_run_writes_a_split_that_adds_up(tmp_path):
    floor = _floor_module()
    out = tmp_path / "floor.json"
    assert floor.main(["--quick", "--threads", "1", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    for key in (
        "cells",
        "total_s",
        "floor_s",
        "parts_s",
        "parts_share",
        "calls",
        "ratios",
        "goals",
        "met",
        "loadavg_before",
        "loadavg_after",
        "date",
        "machine",
    ):
        assert key in result, key
    assert set(result["parts_s"]) == set(floor.PARTS) | {"other"}
    assert set(result["ratios"]) >= {"total_over_floor", "measures_share", "storage_io_share"}
    assert result["cells"] == 12 and result["failed"] == 0
    parts = result["parts_s"]
    named = sum(v for k, v in parts.items() if k != "other")
    assert all(v >= 0 for k, v in parts.items() if k != "other")
    # the named parts never overlap (at most the total) and account for at least 90% of it
    assert 0.9 * result["total_s"] <= named <= result["total_s"] * 1.001
    assert result["floor_s"] == pytest.approx(parts["attack"] + parts["defence"] + parts["metric"])
    assert result["calls"]["attack"] == 2  # x_a once per (metric, attack, batch), whatever the defences
    assert result["calls"]["measures"] > 0 and result["calls"]["storage"] > 0 and result["calls"]["png_io"] > 0
    from iqadef.plugins.metrics.embedded import TinyIQA

    assert not getattr(TinyIQA.score, "__floor_timed__", False)  # the timers are gone after the run
