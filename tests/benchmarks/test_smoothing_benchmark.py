"""benchmarks/smoothing.py --quick runs end to end and writes valid JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("method", ["median", "all"])
def test_quick_smoothing_benchmark_writes_valid_json(tmp_path, method):
    out = tmp_path / "smoothing.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "smoothing.py"),
            "--quick",
            "--threads",
            "1",
            "--method",
            method,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "smoothing" and data["rows"]
    if method == "all":  # every built-in certified defence has a row
        assert [row["method"] for row in data["rows"]] == ["ms", "dms", "rs", "drs", "ddrs", "densepure", "fs-iqa"]
        bound = data["fs_iqa"]  # fs-iqa's Lipschitz bound, timed apart, above the largest secant found
        assert bound["lipschitz_bound"] >= bound["lipschitz_lower"] > 0 and bound["lipschitz_seconds"] > 0
    for row in data["rows"]:
        assert row["n"] >= 1 and row["batch"] >= 1
        assert math.isfinite(row["seconds_per_image"]) and row["seconds_per_image"] > 0
