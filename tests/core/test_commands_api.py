"""Commands, the Python API and everyday CLI use: bad arguments are one line (exit 2), trainers never lose their
weights, a broken plugin command disables only itself, files follow the umask (docs/reliability.md,
"Commands and API")."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from iqadef.cli import main
from iqadef.core.errors import ConfigError, IqadefError
from iqadef.core.store import atomic_write_bytes
from iqadef.core.weights import save_trained_weights


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# -- trainers ---------------------------------------------------------------------------------------------

def test_a_checkpoint_named_like_its_own_record_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "dms.json"
    with pytest.raises(ConfigError, match="training record"):
        save_trained_weights(out, {"model": {"w": torch.ones(2)}}, {"epochs": 1})
    assert not out.exists()
    save_trained_weights(tmp_path / "dms.pt", {"model": {"w": torch.ones(2)}}, {"epochs": 1})
    assert torch.load(tmp_path / "dms.pt", weights_only=True)["model"]["w"].tolist() == [1.0, 1.0]
    assert json.loads((tmp_path / "dms.json").read_text()) == {"epochs": 1}


@pytest.mark.parametrize("command", ["train-dms", "train-fcn"])
def test_trainers_refuse_a_json_out_before_training(tmp_path, command, capsys):
    assert main([command, str(tmp_path / "no-run"), "--out", str(tmp_path / "w.json")]) == 2
    assert "training record" in _one_error_line(capsys)


def test_non_finite_trained_weights_are_not_saved(tmp_path):
    out = tmp_path / "w.pt"
    with pytest.raises(IqadefError, match="NaN or infinite"):
        save_trained_weights(out, {"model": {"conv.weight": torch.tensor([1.0, float("nan")])}, "sigma": 0.1}, {})
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--sigma", "inf"), ("--sigma", "nan"),
                                           ("--epochs", "0"), ("--lr", "-1"), ("--rank-weight", "inf")])
def test_train_dms_refuses_bad_parameters_in_one_line(tmp_path, option, value, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    assert main(["train-dms", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt"), option, value]) == 2
    assert _one_error_line(capsys).startswith(f"error: {option}:")
    assert not (tmp_path / "w.pt").exists()


def test_train_dms_names_a_run_json_that_is_not_json(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{not json")
    assert main(["train-dms", str(tmp_path / "run"), "--out", str(tmp_path / "w.pt")]) == 2
    assert "run.json: cannot be read" in _one_error_line(capsys)


# -- files follow the umask ---------------------------------------------------------------------------------

def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "report.html", b"<html>")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.csv", b"a,b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600
