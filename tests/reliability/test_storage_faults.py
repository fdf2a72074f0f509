"""Disk full, names that try to escape the run directory, two processes on one run directory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import iqadef.core.runner as runner_module
from iqadef.cli import main
from iqadef.core.registry import load_run_config
from iqadef.core.runner import run_grid
from iqadef.core.store import DiskFullError

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
metrics: [toy-metric]
attacks: [toy-sign]
defences: [no-defence, toy-blur]
"""


def config(tmp_path, images, registry, output):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(images=images, output=output))
    return load_run_config(path, registry=registry)


def test_disk_full_gives_a_clear_error_and_the_store_stays_consistent(tmp_path, image_dir, toy_registry, monkeypatch):
    full = run_grid(config(tmp_path, image_dir, toy_registry, "full"), registry=toy_registry, progress=False)
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
        run_grid(cfg, registry=toy_registry, progress=False)
    monkeypatch.setattr(runner_module, "atomic_write_bytes", real_write)
    resumed = run_grid(cfg, registry=toy_registry, progress=False)
    assert resumed.skipped > 0
    pd.testing.assert_frame_equal(pd.read_parquet(full.run_dir / "results.parquet").drop(columns="image_path"),
                                  pd.read_parquet(resumed.run_dir / "results.parquet").drop(columns="image_path"))


def test_enospc_from_the_os_becomes_disk_full_error(tmp_path, monkeypatch):
    from iqadef.core import store

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
    summary = run_grid(cfg, registry=toy_registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    assert (df["status"] == "ok").all() and df["image"].nunique() == 3
    run_dir = summary.run_dir.resolve()
    for rel in list(df["adv_path"]) + [p for p in df["example_path"] if p]:
        assert not os.path.isabs(rel) and ".." not in Path(rel).parts
        assert (run_dir / rel).resolve().is_relative_to(run_dir)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(run_dir) or p.resolve().is_relative_to(images.resolve())
               or p.suffix == ".yaml" for p in written)


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
    run_grid(cfg, registry=toy_registry, progress=False)
    stale = cfg.output / "cache" / "adv" / "ab" / ".abcdef.png.x1y2.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    run_grid(cfg, registry=toy_registry, progress=False)
    assert not stale.exists()
