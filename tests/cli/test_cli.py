from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from repo_paths import REPO_ROOT

from iqadef import __version__
from iqadef.cli import main

ROOT = REPO_ROOT


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


def test_list_defences_json_lists_builtins_with_flags_and_presets(capsys):
    assert main(["list", "defences", "--json"]) == 0
    items = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert {"no-defence", "jpeg", "flip"} <= set(items)
    assert items["no-defence"]["differentiable"] is True and items["no-defence"]["randomized"] is False
    quality = {p["name"]: p for p in items["jpeg"]["params"]}["quality"]
    assert quality["default"] == 50 and quality["presets"]


@pytest.mark.parametrize("kind", ["metrics", "attacks", "scores"])
def test_list_other_kinds_json(kind, capsys):
    assert main(["list", kind, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_user_mistake_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("metrics: [tiny-iq]\nattacks: [ifgsm]\n")
    out = subprocess.run([sys.executable, "-m", "iqadef", "run", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "r.yaml: metrics[0]: unknown metric 'tiny-iq' (did you mean 'tiny-iqa'?)" in out.stderr


def test_report_of_a_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_default_registry_runs_end_to_end(tmp_path):
    """The README's main job on two images: tables, summary and report are written."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iqadef",
            "run",
            str(ROOT / "registry.yaml"),
            "--limit",
            "2",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean normalised gain" in out.stdout
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "error"].unique()
    assert df["image"].nunique() == 2
    assert (tmp_path / "run" / "results.csv").is_file()
    assert (tmp_path / "run" / "report.html").is_file()
