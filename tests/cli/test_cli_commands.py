"""`iqadef plan`, `iqadef weights` (sizes, URLs, fetch --all / --registry), `iqadef list` output and pipes."""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import toy_plugins
from repo_paths import REPO_ROOT
from toy_plugins import small_grid_config

import iqadef.cli as cli
from iqadef import Metric, hookimpl
from iqadef.cli import main
from iqadef.core.plugins import InstalledPlugins
from iqadef.core.weights import WeightSpec, load_weights
from iqadef.execute import run_grid

ROOT = REPO_ROOT


def test_plan_shows_the_grid_and_what_a_run_folder_holds(tmp_path, image_dir, toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    config = small_grid_config(tmp_path, image_dir, toy_registry, "run")
    path = tmp_path / "run.yaml"
    assert main(["plan", str(path), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["cells"], plan["cells_done"], plan["cells_to_do"], plan["units_to_do"]) == (12, 0, 12, 3)
    assert plan["defences"] == ["no-defence", "toy-blur"] and plan["images"] == 6
    # toy-sign: 2 steps per image; f(x), f(x_a) once per image, f(D(x)), f(D(x_a)) per defence
    assert plan["plugin_calls"] == {
        "attack_runs": 6,
        "attack_steps": 12,
        "attack_queries": 0,
        "metric_scores": 36,
        "defence_calls": 24,
        "smoothing_samples": 0,
    }
    assert not (tmp_path / "run").exists()  # planning writes nothing

    run_grid(config, progress=False, plugins=toy_registry, limit=4)  # the first two batches
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "grid: 6 images x 1 metrics x 1 attacks x 2 defences = 12 cells" in text
    assert "cells: 4 to do in 1 units" in text and "8 already in" in text


def test_plan_measure_times_units_in_a_temporary_folder(tmp_path, image_dir, toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: toy_registry)
    small_grid_config(tmp_path, image_dir, toy_registry, "run")
    assert main(["plan", str(tmp_path / "run.yaml"), "--measure", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["measured"]
    assert measured["timed_units"] == 1 and measured["seconds"] > 0
    assert list(measured["seconds_per_cell"]) == ["toy-metric x toy-sign"]
    assert not (tmp_path / "run").exists()


# -- weights ---------------------------------------------------------------------------------------
def _checkpoint(tmp_path: Path) -> bytes:
    path = tmp_path / "ckpt.pt"
    torch.save({"scale": torch.tensor(2.0)}, path)
    return path.read_bytes()


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server over ``tmp_path/served``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def _weighted_registry(base_url: str) -> InstalledPlugins:
    class Scaled(Metric):
        """The mean pixel times a scale read from a checkpoint."""

        name = "toy-scaled"
        weights = (WeightSpec("toy-scale.pt", (f"{base_url}/toy-scale.pt",), size=None),)

        def setup(self, device):
            self.scale = float(load_weights(self.weights[0])["scale"])

        def score(self, images):
            return images.mean(dim=(1, 2, 3)) * self.scale

    class Other(Scaled):
        name = "toy-other"
        weights = (WeightSpec("toy-other.pt", (f"{base_url}/toy-other.pt",), size=1234),)

    class Plugin:
        @hookimpl
        def iqadef_register_metrics(self, register):
            register(Scaled)
            register(Other)

    return InstalledPlugins(extra=[Plugin(), toy_plugins], entry_points=False)


def _table_rows(text: str) -> dict[str, list[str]]:
    """``iqadef weights``' entries of the toy plugins: [plugin, file, size, present path or "missing", first
    URL] (a heading ``metric NAME: FILE, STATE, size SIZE``, then the path or the URLs, one per line)."""
    rows: dict[str, list[str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        head = re.fullmatch(r"(metric toy-[\w-]+): (\S+), (present|missing), size (.+)", line)
        if head:
            plugin, filename, state, size = head.groups()
            below = lines[i + 1].strip()
            rows[plugin] = [
                plugin,
                filename,
                size,
                below if state == "present" else "missing",
                below if state == "missing" else "",
            ]
    return rows


def test_weights_table_and_json_agree_then_fetch_for_a_registry(tmp_path, home, server, monkeypatch, capsys):
    folder, url = server
    (folder / "toy-scale.pt").write_bytes(_checkpoint(tmp_path))
    registry = _weighted_registry(url)
    monkeypatch.setattr(cli, "_plugins", lambda: registry)

    def listed():
        assert main(["weights", "--json"]) == 0
        described = {d["plugin"]: d for d in json.loads(capsys.readouterr().out) if d["plugin"].startswith("toy-")}
        assert main(["weights"]) == 0
        rows = _table_rows(capsys.readouterr().out)
        for name, d in described.items():
            row = rows[f"metric {name}"]
            assert (row[3] == "missing") == (d["present"] is None) and (d["present"] is None or row[3] == d["present"])
            assert d["present"] is not None or row[4] == d["urls"][0]
        return described, rows

    described, rows = listed()
    assert described["toy-scaled"]["present"] is None and rows["metric toy-scaled"][2] == "?"
    assert rows["metric toy-other"][2] == "1.2 KB"  # the declared size of a missing file

    reg = tmp_path / "r.yaml"
    reg.write_text(f"dataset: {{images: {tmp_path / 'served'}}}\nmetrics: [toy-scaled]\nattacks: [toy-sign]\n")
    assert main(["weights", "fetch", "--registry", str(reg)]) == 0
    assert "toy-scaled: " in capsys.readouterr().out
    described, rows = listed()
    fetched = Path(described["toy-scaled"]["present"])
    assert fetched.read_bytes() == (folder / "toy-scale.pt").read_bytes()
    assert described["toy-scaled"]["size"] == fetched.stat().st_size
    assert described["toy-other"]["present"] is None  # not used by that registry: not fetched

    assert main(["weights", "fetch"]) == 2
    assert "iqadef weights fetch NAME | --all | --registry" in capsys.readouterr().err


def test_weights_fetch_all_names_the_file_it_could_not_get(tmp_path, home, server, monkeypatch, capsys):
    folder, url = server
    (folder / "toy-scale.pt").write_bytes(_checkpoint(tmp_path))  # toy-other.pt is not served
    registry = _weighted_registry(url)
    monkeypatch.setattr(cli, "_plugins", lambda: registry)
    every = cli._weight_rows
    monkeypatch.setattr(cli, "_weight_rows", lambda: [r for r in every() if r[1].startswith("toy-")])
    assert main(["weights", "fetch", "--all"]) == 2
    captured = capsys.readouterr()
    assert "toy-scaled: " in captured.out and "toy-other.pt" in captured.err


# -- list ----------------------------------------------------------------------------------------
def test_list_shows_fractions_as_written_and_ranges_with_few_digits(capsys):
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "eps: float = 10/255" in out and "alpha: float = 1/255" in out
    assert "0.0392156862745098" not in out
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "range=[-6, 86]" in out and "25.780681610107422" not in out


def test_list_json_into_a_closed_pipe_is_quiet():
    proc = subprocess.Popen(
        [sys.executable, "-m", "iqadef", "list", "attacks", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # `| head` that has read what it wanted: every write now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_python_dash_m_iqadef_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "iqadef", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("iqadef ")
