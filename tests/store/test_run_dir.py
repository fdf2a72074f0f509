"""A run deletes only what it wrote: refused folders, --fresh, the sweep of temporary files (issue 13, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iqadef.cli import main
from iqadef.config.registry import load_run_config
from iqadef.core.errors import IqadefError
from iqadef.execute import run_grid
from iqadef.report import write_report
from iqadef.store.rundir import MARKER, RunFolder, prepare_run_dir

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
examples: 2
metrics: [toy-metric]
attacks: [toy-sign]
defences: [no-defence, toy-blur]
"""


def config(tmp_path, images, registry, output="run"):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(images=images, output=output))
    return load_run_config(path, plugins=registry)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_root_and_home_folder_are_refused(tmp_path, image_dir, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(IqadefError, match=r"^output: / is the root folder"):
        prepare_run_dir(Path("/"))
    registry = tmp_path / "r.yaml"
    registry.write_text(f'dataset: {{images: {image_dir}}}\noutput: "~"\nmetrics: [tiny-iqa]\nattacks: [fgsm]\n')
    assert main(["run", str(registry), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: output: {home} is your home folder; a run writes and deletes files in its folder, so "
        "give it a folder of its own (e.g. runs/NAME)\n"
    )
    assert list(home.iterdir()) == [] and not (tmp_path / "~").exists()  # nothing written anywhere
    assert main(["run", str(registry), "--no-progress", "--output", "~"]) == 2
    assert "is your home folder" in capsys.readouterr().err


def test_a_non_empty_folder_that_is_not_a_run_folder_is_refused(tmp_path, image_dir, toy_registry, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"my picture")
    registry = tmp_path / "r.yaml"
    registry.write_text(GRID.format(images=image_dir, output=mine))
    cfg = load_run_config(registry, plugins=toy_registry)
    with pytest.raises(IqadefError) as caught:
        run_grid(cfg, plugins=toy_registry, progress=False)
    message = str(caught.value)
    assert message.startswith(f"output: {mine} is not empty and is not an iqadef run folder") and "\n" not in message
    assert files_under(mine) == {"holiday.jpg"}
    # through the command line: one line, exit status 2
    registry.write_text(f"dataset: {{images: {image_dir}}}\noutput: {mine}\nmetrics: [tiny-iqa]\nattacks: [fgsm]\n")
    assert main(["run", str(registry), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"error: output: {mine} is not empty and is not an iqadef run folder")


def test_empty_folders_and_run_folders_of_an_older_version_are_accepted(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    cfg.output.mkdir()
    first = run_grid(cfg, plugins=toy_registry, progress=False)
    assert first.computed == first.total and (cfg.output / MARKER).is_file()
    # a folder written before the marker existed: it has results.sqlite and run.json
    (cfg.output / MARKER).unlink()
    again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert again.skipped == again.total
    assert json.loads((cfg.output / MARKER).read_text().splitlines()[0])["legacy"] is True
    # run.json alone (written by iqadef) is recognised too
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"iqadef_version": "0.1"}))
    assert RunFolder(other).is_run_folder()
    (other / "run.json").write_text(json.dumps({"tool": "something else"}))
    assert not RunFolder(other).is_run_folder()


def test_fresh_deletes_only_what_iqadef_wrote(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    cfg.examples = 3
    run_grid(cfg, plugins=toy_registry, progress=False)
    cfg.examples = 2
    write_report(cfg.output)
    before = files_under(cfg.output)
    assert any(f.startswith("figures/") for f in before) and any(f.startswith("examples/") for f in before)
    users = {
        "examples/mine.png": b"a user's picture",
        "figures/plot.png": b"a user's plot",
        "cache/notes.txt": b"notes",
        "my-results.csv": b"a,b",
        "draft.tmp": b"x",
        ".draft.tmp": b"x",
        "sub/.half.png.abcd1234.tmp": b"x",
    }
    for rel, data in users.items():
        (cfg.output / rel).parent.mkdir(parents=True, exist_ok=True)
        (cfg.output / rel).write_bytes(data)
    summary = run_grid(cfg, plugins=toy_registry, progress=False, fresh=True, limit=2)
    assert summary.computed == summary.total == 2 * 2
    after = files_under(cfg.output)
    for rel, data in users.items():
        assert (cfg.output / rel).read_bytes() == data, rel
    assert not any(f.startswith("figures/") and f != "figures/plot.png" for f in after)  # the old report's figures
    assert "report.html" not in after and "summary.csv" not in after
    # the first run saved examples of three images, the fresh one of two: the third image's are gone
    assert len({f for f in before if f.startswith("examples/")}) == 3 * 2
    examples = {f for f in after if f.startswith("examples/") and f != "examples/mine.png"}
    assert len(examples) == 2 * 2
    recorded = RunFolder(cfg.output).recorded()
    assert examples <= recorded and not any(rel in recorded for rel in users)


def test_fresh_in_a_folder_of_an_older_version_keeps_a_users_files(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    run_grid(cfg, plugins=toy_registry, progress=False)
    (cfg.output / MARKER).unlink()  # as an older iqadef left it: no manifest
    (cfg.output / "figures").mkdir()
    (cfg.output / "figures" / "gain_heatmap_toy-metric.png").write_bytes(b"old figure name")
    (cfg.output / "figures" / "my plot.png").write_bytes(b"mine")
    (cfg.output / "examples" / "mine.png").write_bytes(b"mine")
    old_examples = {f for f in files_under(cfg.output) if f.startswith("examples/") and f != "examples/mine.png"}
    assert len(old_examples) == 2 * 2
    folder = prepare_run_dir(cfg.output)  # recognised by its results.sqlite and run.json
    folder.fresh()
    after = files_under(cfg.output)
    assert after == {MARKER, ".lock", "figures/my plot.png", "examples/mine.png"}  # the user's files stay
    assert not (cfg.output / "cache").exists()  # iqadef's folders go once they are empty


def test_a_resume_sweeps_only_iqadef_temporary_files_of_processes_that_are_gone(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    run_grid(cfg, plugins=toy_registry, progress=False)
    shard = next((cfg.output / "cache" / "adv").iterdir())
    gone, alive = dead_pid(), os.getppid()
    stale = [
        shard / f".iqadef-tmp-{gone}-k3j4l5m6.tmp",
        cfg.output / f".iqadef-tmp-{gone}-abc_1234.tmp",
        shard / f".{'ab' * 32}.png.x1y2z3w4.tmp",  # an older version's temporary name for a cache file
        cfg.output / ".results.parquet.tmp",
    ]
    kept = [
        shard / f".iqadef-tmp-{alive}-k3j4l5m6.tmp",  # another live iqadef process is writing it
        cfg.output / ".draft.tmp",
        cfg.output / "notes" / ".x.tmp",
        shard / ".mine.tmp",
        cfg.output / f"notes/.iqadef-tmp-{gone}-abcdefgh.tmp",
    ]  # not in a folder iqadef writes into
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    run_grid(cfg, plugins=toy_registry, progress=False)
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)


def test_every_file_a_run_and_its_report_write_is_in_the_manifest(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    run_grid(cfg, plugins=toy_registry, progress=False)
    write_report(cfg.output)
    folder = RunFolder(cfg.output)
    written = files_under(cfg.output) - {MARKER, ".lock"}
    unlisted = written - folder.recorded() - set(folder.own_files())
    assert not unlisted
