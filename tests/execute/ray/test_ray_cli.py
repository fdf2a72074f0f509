"""`iqadef run --executor ray` starts Ray on this machine, runs the grid there, and shuts Ray down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from toy_plugins import install_as_distribution

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid

REGISTRY = """
dataset: {{images: {images}}}
output: {output}
executor: local
batch_size: 3
seed: 2
metrics: [toy-metric]
attacks: [toy-sign, toy-noise]
defences: [no-defence, toy-noise-defence]
ray: {{local_cpus: 2}}
"""


@pytest.mark.ray
@pytest.mark.slow
def test_cli_executor_flag_runs_the_grid_on_a_ray_instance_it_starts(tmp_path, image_dir, ray_registry):
    pytest.importorskip("ray")
    for name in ("cli", "local"):
        (tmp_path / f"{name}.yaml").write_text(REGISTRY.format(images=image_dir, output=name))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(install_as_distribution(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iqadef",
            "run",
            "--no-report",
            "--no-progress",
            "--executor",
            "ray",
            str(tmp_path / "cli.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert info["registry"]["executor"] == "ray"  # the registry said local; the flag won
    assert "Started a local Ray instance" in done.stderr  # no address: Ray was started here
    local = run_grid(
        load_run_config(tmp_path / "local.yaml", plugins=ray_registry), plugins=ray_registry, progress=False
    )
    a = pd.read_parquet(local.run_dir / "results.parquet")
    b = pd.read_parquet(tmp_path / "cli" / "results.parquet")
    assert len(b) == 6 * 2 * 2 and (b["status"] == "ok").all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
