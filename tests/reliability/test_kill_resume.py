"""A run killed with SIGKILL mid-grid and resumed ends with the table of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from toy_plugins import install_as_distribution


def registry(tmp_path: Path, images: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
dataset: {{images: {images}}}
output: {name}
batch_size: 1
seed: 11
metrics: [toy-metric]
attacks: [{{name: toy-sign, steps: 60}}, toy-noise]
defences: [no-defence, toy-blur, toy-noise-defence]
""")
    return path


def cells_done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path, image_dir):
    env = {**os.environ, "PYTHONPATH": str(install_as_distribution(tmp_path)), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "iqadef", "run", "--no-report", "--no-progress"]
    full = registry(tmp_path, image_dir, "full")
    subprocess.run(cmd + [str(full)], env=env, check=True, capture_output=True, timeout=300)

    killed = registry(tmp_path, image_dir, "killed")
    db = tmp_path / "killed" / "results.sqlite"
    total = 6 * 2 * 3
    kills = 0
    for target in (3, 12, 24):  # kill after at least `target` cells are stored
        proc = subprocess.Popen(cmd + [str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while cells_done(db) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert cells_done(db) < total or proc.returncode == 0
    assert kills >= 2, "the run finished before it could be killed; make it slower"
    done = subprocess.run(cmd + [str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stdout

    a = pd.read_parquet(tmp_path / "full" / "results.parquet")
    b = pd.read_parquet(tmp_path / "killed" / "results.parquet")
    assert len(b) == total and not b.duplicated(["metric", "attack", "defence", "image"]).any()
    pd.testing.assert_frame_equal(a, b)
    # no half-written cache file is left behind
    assert not list((tmp_path / "killed").rglob("*.tmp"))
