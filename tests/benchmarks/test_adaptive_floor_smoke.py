"""Smoke test of benchmarks/adaptive_floor.py: its quick mode runs end to end and writes valid JSON (no timing
assertion: the figures of a quick run on tiny inputs mean nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.slow
def test_quick_run_writes_every_ratio(tmp_path):
    out = tmp_path / "adaptive_floor.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "adaptive_floor.py"),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and [r["defence"] for r in result["rows"]] == ["random-rotate", "jpeg"]
    for row in result["rows"]:
        for key in (
            "floor_step_s",
            "floor_query_s",
            "ifgsm_over_floor",
            "ifgsm_per_draw_over_floor",
            "apgd_over_floor",
            "square_over_floor",
        ):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert result["rows"][0]["eot_samples"] == result["samples"] and result["rows"][1]["eot_samples"] == 1
