"""The example third-party plugin installs with pip, shows up in `iqadef plugins`, and a run uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "iqadef-plugin-example"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, timeout=300)


@pytest.mark.slow
def test_example_plugin_install_list_run_uninstall(tmp_path):
    pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    try:
        listed = subprocess.run([sys.executable, "-m", "iqadef", "plugins", "--json"], capture_output=True,
                                text=True, check=True)
        plugins = json.loads(listed.stdout)["plugins"]
        mine = [p for p in plugins if p["distribution"] == "iqadef-plugin-example"]
        assert mine and mine[0]["registers"] == {"defences": ["bit-depth"]} and mine[0]["version"] == "0.1.0"

        registry = tmp_path / "registry.yaml"
        registry.write_text(f"""
dataset: {{images: builtin}}
output: {tmp_path / 'run'}
metrics: [tiny-iqa]
attacks: [ifgsm]
defences: [no-defence, {{name: bit-depth, sweep: {{bits: [3, 5]}}}}]
""")
        run = subprocess.run([sys.executable, "-m", "iqadef", "run", str(registry), "--limit", "2", "--no-report",
                              "--no-progress"], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        df = pd.read_parquet(tmp_path / "run" / "results.parquet")
        assert set(df["defence"]) == {"no-defence", "bit-depth[bits=3]", "bit-depth"}
        three = df[df["defence"] == "bit-depth[bits=3]"]
        assert (three["status"] == "ok").all()
    finally:
        pip("uninstall", "-y", "iqadef-plugin-example")
    after = subprocess.run([sys.executable, "-m", "iqadef", "plugins", "--json"], capture_output=True, text=True)
    assert "iqadef-plugin-example" not in after.stdout
