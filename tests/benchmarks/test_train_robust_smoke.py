"""Smoke test of benchmarks/train_robust.py: a one-epoch run writes valid JSON with every figure it promises."""

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
def test_one_epoch_writes_the_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path]), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_robust.py"),
            "--methods",
            "nt",
            "--epochs",
            "1",
            "--crops-per-image",
            "1",
            "--eval-crops",
            "1",
            "--json",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    data = json.loads(out.read_text())
    assert len(data["train_images"]) == len(data["held_out_images"]) == 7
    assert not set(data["train_images"]) & set(data["held_out_images"])
    nt = data["methods"]["nt"]
    for key in ("train_seconds", "gain_mean", "clean_pearson_with_original", "input_grad_l1_mean"):
        assert math.isfinite(nt[key])
    assert len(nt["gain_ci95"]) == 2 and nt["gain_ci95"][0] <= nt["gain_mean"] <= nt["gain_ci95"][1]
