"""Disk full, damaged files in the run folder, names that try to escape the run directory."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from toy_plugins import SMALL_GRID, install_as_distribution
from toy_plugins import small_grid_config as config

import iqadef.execute.driver as runner_module
from iqadef.cli import main
from iqadef.execute import run_grid
from iqadef.report import write_report
from iqadef.store.results import CorruptStoreError, DiskFullError, StorageWarning


def test_disk_full_gives_a_clear_error_and_the_store_stays_consistent(tmp_path, image_dir, toy_registry, monkeypatch):
    full = run_grid(config(tmp_path, image_dir, toy_registry, "full"), plugins=toy_registry, progress=False)
    real_write = runner_module.atomic_write_bytes
    calls = {"n": 0}

    def failing_write(path, data):
        calls["n"] += 1
        if calls["n"] > 9:  # run.json, then the first two units write 8 files
            raise DiskFullError(f"{path}: disk full while writing; free space and run again with --resume")
        return real_write(path, data)

    monkeypatch.setattr(runner_module, "atomic_write_bytes", failing_write)
    cfg = config(tmp_path, image_dir, toy_registry, "broken")
    with pytest.raises(DiskFullError, match="disk full"):
        run_grid(cfg, plugins=toy_registry, progress=False)
    monkeypatch.setattr(runner_module, "atomic_write_bytes", real_write)
    resumed = run_grid(cfg, plugins=toy_registry, progress=False)
    assert resumed.skipped > 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(full.run_dir / "results.parquet").drop(columns="image_path"),
        pd.read_parquet(resumed.run_dir / "results.parquet").drop(columns="image_path"),
    )


def test_enospc_from_the_os_becomes_disk_full_error(tmp_path, monkeypatch):
    from iqadef.store import results as store

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "replace", no_space)
    with pytest.raises(DiskFullError, match="disk full"):
        store.atomic_write_bytes(tmp_path / "x.png", b"data")
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


def test_odd_image_names_cannot_escape_the_run_directory(tmp_path, toy_registry):
    images = tmp_path / "imgs"
    (images / "sub dir").mkdir(parents=True)
    arr = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    for name in ("..weird name #1.png", "sub dir/ü;$(rm -rf x).png", "-dash.png"):
        Image.fromarray(arr).save(images / name)
    cfg = config(tmp_path, images, toy_registry, "run")
    cfg.examples = 3
    summary = run_grid(cfg, plugins=toy_registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    assert (df["status"] == "ok").all() and df["image"].nunique() == 3
    run_dir = summary.run_dir.resolve()
    for rel in list(df["adv_path"]) + [p for p in df["example_path"] if p]:
        assert not os.path.isabs(rel) and ".." not in Path(rel).parts
        assert (run_dir / rel).resolve().is_relative_to(run_dir)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(
        p.resolve().is_relative_to(run_dir) or p.resolve().is_relative_to(images.resolve()) or p.suffix == ".yaml"
        for p in written
    )


def test_unwritable_output_directory_is_a_clear_error(tmp_path, image_dir, capsys):
    if os.geteuid() == 0:
        target = tmp_path / "file-not-dir"
        target.write_text("x")
        output = target / "run"  # a path below a file can never be created
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        output = locked / "run"
    reg = tmp_path / "r.yaml"
    reg.write_text(f"dataset: {{images: {image_dir}}}\noutput: {output}\nmetrics: [tiny-iqa]\nattacks: [ifgsm]\n")
    assert main(["run", str(reg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: output: cannot write to") and "Traceback" not in err


def test_temporary_files_left_by_a_killed_run_are_swept_on_resume(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry, "run")
    run_grid(cfg, plugins=toy_registry, progress=False)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    stale = cfg.output / "cache" / "adv" / "ab" / f".iqadef-tmp-{gone.pid}-x1y2z3w4.tmp"
    users = cfg.output / "cache" / "adv" / "ab" / ".abcdef.png.x1y2.tmp"  # not a name iqadef gives
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    users.write_bytes(b"someone else's")
    run_grid(cfg, plugins=toy_registry, progress=False)
    assert not stale.exists() and users.exists()


# -- damaged files in the run folder (issue 13, item 9) ------------------------------------------
def test_a_truncated_example_is_shown_as_missing_and_written_again_on_resume(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry, "run")
    run_grid(cfg, plugins=toy_registry, progress=False)
    df = pd.read_parquet(cfg.output / "results.parquet")
    rel = sorted(p for p in df["example_path"] if p)[0]
    example = cfg.output / rel
    good = example.read_bytes()
    example.write_bytes(good[: len(good) // 2])

    with pytest.warns(StorageWarning, match="cannot be read"):
        written = write_report(cfg.output)  # the report is written all the same
    assert f"{example} (" in written["html"].read_text() and f"{example} (" in written["markdown"].read_text()
    assert "shown as missing" in written["markdown"].read_text()

    with pytest.warns(StorageWarning, match="1 example image.* missing or unreadable"):
        again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert again.computed == 2 and again.failed == 0  # the example's cell (and its batch) computed again
    assert example.read_bytes() == good
    with warnings.catch_warnings():
        warnings.simplefilter("error", StorageWarning)
        assert "could not be read" not in write_report(cfg.output)["html"].read_text()


def damage_the_cells_table(db: Path) -> None:
    """Garbage over the first bytes of the cells table's root page: SQLite can no longer read the table."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'cells'").fetchone()[0]
        page = con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(bytes(range(7, 71)))


def test_a_damaged_result_store_is_one_clear_line(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry, "run")
    full = run_grid(cfg, plugins=toy_registry, progress=False)
    before = pd.read_parquet(full.run_dir / "results.parquet")
    db = cfg.output / "results.sqlite"
    damage_the_cells_table(db)
    with pytest.raises(CorruptStoreError) as caught:
        run_grid(cfg, plugins=toy_registry, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{db}: the result store is damaged") and "\n" not in message
    assert "move it aside" in message and "PRAGMA integrity_check" in message
    # what the message says works: move it aside (or --fresh) and run again; the table is the same
    for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
        if (cfg.output / name).exists():
            (cfg.output / name).rename(tmp_path / f"{name}.damaged")
    run_grid(cfg, plugins=toy_registry, progress=False)
    pd.testing.assert_frame_equal(before, pd.read_parquet(cfg.output / "results.parquet"))
    damage_the_cells_table(db)
    fresh = run_grid(cfg, plugins=toy_registry, progress=False, fresh=True)
    assert fresh.computed == fresh.total


def test_disk_full_while_the_report_is_written_keeps_the_results_and_says_so(
    tmp_path, image_dir, toy_registry, monkeypatch, capsys
):
    from iqadef.store import results as store

    cfg = config(tmp_path, image_dir, toy_registry, "run")
    run_grid(cfg, plugins=toy_registry, progress=False)
    write_report(cfg.output)
    kept = {name: (cfg.output / name).read_bytes() for name in ("results.parquet", "results.csv", "report.html")}
    real_replace = store.os.replace

    def no_space_for_the_report(src, dst, *args, **kwargs):
        if Path(dst).name in ("report.html", "report.md") or Path(dst).parent.name == "figures":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(store.os, "replace", no_space_for_the_report)
    assert main(["report", str(cfg.output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "disk full while writing" in err and "the results are kept" in err
    assert f"run `iqadef report {cfg.output}`" in err
    for name, data in kept.items():
        assert (cfg.output / name).read_bytes() == data, name  # nothing lost, the old report whole
    assert not [p for p in cfg.output.rglob("*.tmp")]


def test_disk_full_when_the_store_is_created_does_not_advise_fresh(tmp_path, image_dir, toy_registry, monkeypatch):
    from iqadef.store import results as store

    real_connect = store.sqlite3.connect

    class FullDisk:
        """A connection on a full disk: creating the tables fails as SQLite reports it."""

        def __init__(self, *args, **kwargs):
            self._con = real_connect(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._con, name)

        def __setattr__(self, name, value):
            if name == "_con":
                object.__setattr__(self, name, value)
            else:
                setattr(self._con, name, value)

        def executescript(self, script):
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.sqlite3, "connect", FullDisk)
    with pytest.raises(DiskFullError) as caught:
        run_grid(config(tmp_path, image_dir, toy_registry, "run"), plugins=toy_registry, progress=False)
    assert "disk full" in str(caught.value) and "--fresh" not in str(caught.value)


@pytest.mark.slow
def test_a_really_full_disk_gives_one_clear_line(tmp_path, image_dir):
    """On a tiny tmpfs (a user and mount namespace, where the system allows one): the first unit, and the
    report of a finished run, each stop with one line that says the disk is full."""
    probe = (
        subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k none {tmp_path}"], capture_output=True
        )
        if shutil.which("unshare")
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("no unprivileged mount namespace here to make a small file system")
    env = {**os.environ, "PYTHONPATH": str(install_as_distribution(tmp_path)), "OMP_NUM_THREADS": "1"}
    small = tmp_path / "small"
    small.mkdir()
    registry = tmp_path / "grid.yaml"
    registry.write_text(SMALL_GRID.format(images=image_dir, output=small / "run"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iqadef",
            "run",
            str(registry),
            "--no-progress",
            "--output",
            str(tmp_path / "done"),
            "--no-report",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    used_kb = sum(p.stat().st_size for p in (tmp_path / "done").rglob("*") if p.is_file()) // 1024 + 64
    script = f"mount -t tmpfs -o size={{size}}k none {small} && {{command}}"
    steps = {
        "store": (24, f"{sys.executable} -m iqadef run {registry} --no-progress"),
        "report": (
            used_kb,
            f"cp -r {tmp_path / 'done'} {small / 'run'} && {sys.executable} -m iqadef report {small / 'run'}",
        ),
    }
    for step, (size, command) in steps.items():
        out = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script.format(size=size, command=command)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2, (step, out.stdout, out.stderr)
        lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "disk full" in lines[0] and "--fresh" not in lines[0], (step, out.stderr)
        assert "Traceback" not in out.stderr, (step, out.stderr)
        if step == "report":
            assert "the results are kept" in lines[0]
