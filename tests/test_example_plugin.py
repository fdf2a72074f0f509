"""The example third-party plugin installs with pip, shows up in `iqadef plugins`, and a run uses it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from repo_paths import REPO_ROOT

from iqadef.core.dataset import Dataset, builtin_images_dir
from iqadef.core.plugins import InstalledPlugins

ROOT = REPO_ROOT
EXAMPLE = ROOT / "examples" / "iqadef-plugin-example"


@pytest.fixture(scope="module")
def example():
    """The example package's module, imported from its source folder (not installed)."""
    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        yield importlib.import_module("iqadef_plugin_example")
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
        sys.modules.pop("iqadef_plugin_example", None)


def test_example_metric_attack_and_defence_keep_their_contracts(example):
    registry = InstalledPlugins(extra=[example], entry_points=False)
    metric = registry.get("metrics", "colourfulness")().load("cpu")
    attack = registry.get("attacks", "l2-step")(eps=0.5, steps=4)
    defence = registry.get("defences", "bit-depth")(bits=3)
    dataset = Dataset(builtin_images_dir(), None, max_side=128, limit=3)
    x = dataset.load(dataset.items[:1])
    x_adv = attack.run(metric, x, seed=0)
    assert x_adv.shape == x.shape and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5  # inside its L2 ball (norm = "l2")
    with torch.no_grad():
        assert float(metric(x_adv)) > float(metric(x)) + 1  # the attack pushes the score up
        grey = torch.full((1, 3, 16, 16), 0.5)
        assert float(metric(grey)) < 0.1  # no colour: colourfulness 0
    purified = defence.purify(x_adv)
    assert torch.allclose(purified * 7, (purified * 7).round(), atol=1e-5)  # 3 bits: 8 levels
    described = {d["name"]: d for kind in ("metrics", "attacks", "defences") for d in registry.describe(kind)}
    assert described["colourfulness"]["higher_is_better"] is True and described["l2-step"]["norm"] == "l2"
    assert described["bit-depth"]["differentiable"] is False


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, timeout=300)


@pytest.mark.slow
def test_example_plugin_install_list_run_uninstall(tmp_path):
    pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "iqadef", "plugins", "--json"], capture_output=True, text=True, check=True
        )
        plugins = json.loads(listed.stdout)["plugins"]
        mine = [p for p in plugins if p["distribution"] == "iqadef-plugin-example"]
        assert mine and mine[0]["version"] == "0.1.0"
        assert mine[0]["registers"] == {"metrics": ["colourfulness"], "attacks": ["l2-step"], "defences": ["bit-depth"]}

        registry = tmp_path / "registry.yaml"
        registry.write_text(f"""
dataset: {{images: builtin}}
output: {tmp_path / "run"}
metrics: [tiny-iqa, colourfulness]
attacks: [ifgsm, {{name: l2-step, eps: 0.5}}]
defences: [no-defence, {{name: bit-depth, sweep: {{bits: [3, 5]}}}}]
""")
        run = subprocess.run(
            [sys.executable, "-m", "iqadef", "run", str(registry), "--limit", "2", "--no-report", "--no-progress"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
        df = pd.read_parquet(tmp_path / "run" / "results.parquet")
        assert set(df["defence"]) == {
            "no-defence",
            "bit-depth[bits=3]",
            "bit-depth[bits=5]",
        }  # a sweep names its default
        assert set(df["metric"]) == {"tiny-iqa", "colourfulness"} and set(df["attack"]) == {"ifgsm", "l2-step[eps=0.5]"}
        assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].unique()
        pushed = df[(df["metric"] == "colourfulness") & (df["attack"] == "l2-step[eps=0.5]")]
        assert (pushed["f_adv"] > pushed["f_clean"]).all()
    finally:
        pip("uninstall", "-y", "iqadef-plugin-example")
    after = subprocess.run([sys.executable, "-m", "iqadef", "plugins", "--json"], capture_output=True, text=True)
    assert "iqadef-plugin-example" not in after.stdout
