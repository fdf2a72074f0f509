"""`iqadef plan` as a pre-flight check: the weight files and the dataset a run would miss, each with its fix,
found by the code `iqadef run` checks them with, and nothing downloaded."""

from __future__ import annotations

import json

import iqadef.cli as cli
from iqadef.cli import main

from . import test_cli_commands
from .test_cli_commands import _checkpoint, _weighted_registry

server = test_cli_commands.server  # the local HTTP server fixture


def _registry_file(tmp_path, images, metric: str = "toy-scaled"):
    reg = tmp_path / "r.yaml"
    reg.write_text(
        f"dataset: {{images: {images}}}\noutput: {tmp_path / 'run'}\nmetrics: [{metric}]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence]\n"
    )
    return reg


def test_plan_names_weights_run_would_download_and_downloads_nothing(
    tmp_path, image_dir, home, server, monkeypatch, capsys
):
    folder, url = server
    (folder / "toy-scale.pt").write_bytes(_checkpoint(tmp_path))
    monkeypatch.setattr(cli, "_plugins", lambda: _weighted_registry(url))
    reg = _registry_file(tmp_path, image_dir)
    assert main(["plan", str(reg)]) == 0
    out = capsys.readouterr().out
    assert (
        f"weights: metric toy-scaled: toy-scale.pt is not here yet; `iqadef run` downloads it from {url}/toy-scale.pt"
    ) in out
    assert f"iqadef weights fetch --registry {reg}" in out and "ready:" in out
    assert not list((home / "torch").rglob("toy-scale.pt"))  # planning downloads nothing
    assert main(["plan", str(reg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in plan["weights_to_download"]] == ["toy-scale.pt"] and plan["weights_blocking"] == []

    # once the file is in the cache, plan says nothing about it
    assert main(["weights", "fetch", "--registry", str(reg)]) == 0
    capsys.readouterr()
    assert main(["plan", str(reg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights_to_download"] == [] and plan["weights_blocking"] == []


def test_plan_gives_the_fix_run_gives_for_a_file_it_cannot_get(
    tmp_path, image_dir, offline_home, server, monkeypatch, capsys
):
    _, url = server
    monkeypatch.setattr(cli, "_plugins", lambda: _weighted_registry(url))
    reg = _registry_file(tmp_path, image_dir)
    assert main(["plan", str(reg)]) == 2
    planned = capsys.readouterr()
    assert "ready:" not in planned.out
    lines = [line for line in planned.err.splitlines() if "toy-scale.pt" in line]
    assert len(lines) == 1 and "downloads are disabled (IQADEF_OFFLINE)" in lines[0]
    assert f"Download it from {url}/toy-scale.pt and put it at" in lines[0] and "Traceback" not in planned.err
    assert main(["run", str(reg)]) == 2  # the run stops with the same message
    ran = capsys.readouterr().err
    fix = lines[0].split(": ", 2)[-1]
    assert fix in ran
    assert main(["plan", str(reg), "--json"]) == 2
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights_blocking"][0]["fix"] == fix


def test_plan_names_a_missing_dataset_with_its_fix(tmp_path, home, toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    reg = tmp_path / "r.yaml"
    reg.write_text(
        f"dataset: {{name: koniq10k, root: {tmp_path / 'nothing'}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
    )
    assert main(["plan", str(reg)]) == 2
    err = capsys.readouterr().err
    assert "koniq10k is not in" in err and "run `iqadef data fetch koniq10k`" in err and "Traceback" not in err
