"""`iqadef export` and the `iqadef-export` reader under a hostile user (issue "Trust, round 3", cases 3, 4, 7, 8
and two smaller ones): the reader checks each file's sha256 and stays inside the export folder; export takes
exactly the cells of the run's tables, under the run folder's lock; names are unique and the index matches
the files; a re-export deletes only regular files inside the folder that it wrote and nobody changed; it
sweeps temporary files of killed exports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import export_toys
import pandas as pd
import pytest
import toy_plugins
from ds_helpers import image

from iqadef import ConfigError, IqadefError
from iqadef.config.registry import load_run_config
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid
from iqadef.export import MARKER, export_run
from iqadef.store.results import RunLock


@pytest.fixture(scope="module")
def plugins() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, export_toys], entry_points=False)


def run(tmp_path, registry, text: str, name: str = "run"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    summary = run_grid(load_run_config(path, plugins=registry), progress=False, plugins=registry)
    assert summary.failed == 0
    return summary


def small_run(tmp_path, registry, defences: str = "[no-defence, toy-blur]"):
    for i in range(3):
        image(tmp_path / "imgs" / f"im{i}.png", i)
    return run(
        tmp_path,
        registry,
        f"dataset: imgs\noutput: run\nbatch_size: 2\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ndefences: {defences}\n",
    )


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pngs(folder) -> list:
    return sorted(p for p in folder.rglob("*.png") if p.is_file())


def reader(tmp_path, registry, folder: str = "export"):
    path = tmp_path / "reader.yaml"
    path.write_text(
        f"dataset: {{name: iqadef-export, path: {folder}}}\noutput: run2\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence]\n"
    )
    return load_run_config(path, plugins=registry)


def rewrite_index(folder, change) -> None:
    index = pd.read_parquet(folder / "index.parquet")
    change(index)
    index.to_parquet(folder / "index.parquet", index=False)


# -- case 3: the reader checks what its index promises ------------------------------------------------------
def test_reader_leaves_out_a_png_replaced_in_the_export(tmp_path, plugins):
    small_run(tmp_path, plugins)
    export_run(tmp_path / "run", tmp_path / "export", plugins=plugins)
    files = pngs(tmp_path / "export")
    image(files[0], seed=99)  # a valid PNG of the same size, other pixels: not the exported x_a
    with pytest.warns(UserWarning, match="sha256"):
        dataset = reader(tmp_path, plugins).open_dataset()
    assert sorted(item.path for item in dataset) == files[1:]
    assert len(dataset.problems) == 1 and "sha256" in dataset.problems[0] and "left out" in dataset.problems[0]


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_reader_refuses_an_index_row_outside_the_export(tmp_path, plugins, where):
    small_run(tmp_path, plugins)
    export_run(tmp_path / "run", tmp_path / "export", plugins=plugins)
    outside = image(tmp_path / "private" / "face.png", seed=5)
    if where == "symlink":
        (tmp_path / "export" / "lnk").symlink_to(tmp_path / "private")
    name = {"parent": "../private/face.png", "absolute": str(outside), "symlink": "lnk/face.png"}[where]

    def point_outside(index):
        index.loc[0, "file"] = name
        index.loc[0, "sha256"] = sha256(outside)  # a consistent index: only the place is wrong

    rewrite_index(tmp_path / "export", point_outside)
    with pytest.raises(ConfigError, match=r"index.parquet names .*(not a file inside|leads out of)"):
        reader(tmp_path, plugins).open_dataset()


# -- case 4: export takes the cells of the run's tables, no more ---------------------------------------------
def test_export_after_a_checkpoint_is_replaced_takes_only_the_current_cells(tmp_path, plugins):
    for i in range(3):
        image(tmp_path / "imgs" / f"im{i}.png", i)
    ckpt = tmp_path / "ckpt.txt"
    grid = (
        f"dataset: imgs\noutput: run\nbatch_size: 2\nmetrics: [{{name: toy-ckpt, weights_path: {ckpt}}}]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence, toy-blur]\n"
    )
    ckpt.write_text("1.0")
    run(tmp_path, plugins, grid)
    ckpt.write_text("2.0")  # replaced under the same path: the run recomputes, its tables hold the new cells
    run(tmp_path, plugins, grid)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 6
    summary = export_run(tmp_path / "run", tmp_path / "export", plugins=plugins)
    index = pd.read_parquet(tmp_path / "export" / "index.parquet")
    assert summary.adversarial == len(index) == 3 and index["image"].is_unique
    current = table[table["defence"] == "no-defence"].set_index("image")["f_adv"]
    assert all(row.f_adv == current[row.image] for row in index.itertuples())


# -- smaller: a run in progress, a killed export ------------------------------------------------------------
def test_export_during_a_run_is_refused_in_one_line(tmp_path, plugins):
    small_run(tmp_path, plugins)
    with RunLock(tmp_path / "run"):  # what `iqadef run` holds while it writes
        with pytest.raises(IqadefError, match="an iqadef run is writing this run folder"):
            export_run(tmp_path / "run", tmp_path / "export", plugins=plugins)
    assert not (tmp_path / "export").exists()
    export_run(tmp_path / "run", tmp_path / "export", plugins=plugins)  # after the run: fine


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_reexport_sweeps_temporary_files_of_a_killed_export(tmp_path, plugins):
    small_run(tmp_path, plugins)
    export_run(tmp_path / "run", tmp_path / "export", defended=True, plugins=plugins)
    folder = tmp_path / "export" / "defended" / "toy-metric" / "toy-sign" / "toy-blur"
    killed = folder / f".iqadef-tmp-{dead_pid()}-abc123.tmp"  # what a kill -9 during the write leaves
    killed.write_bytes(b"half a png")
    alive = folder / f".iqadef-tmp-{os.getppid()}-abc123.tmp"  # a live process's: not ours to remove
    alive.write_bytes(b"in flight")
    export_run(tmp_path / "run", tmp_path / "export", defended=True, plugins=plugins)
    assert not killed.exists() and alive.exists()
    # killed before its marker was written: the folder holds only a temporary file, and is taken
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / f".iqadef-tmp-{dead_pid()}-xyz.tmp").write_bytes(b"")
    export_run(tmp_path / "run", tmp_path / "fresh", plugins=plugins)
    assert not list((tmp_path / "fresh").glob(".iqadef-tmp-*"))


# -- case 7: a re-export deletes only its own unchanged regular files ---------------------------------------
def test_reexport_deletes_only_regular_files_it_wrote_inside_the_folder(tmp_path, plugins):
    small_run(tmp_path, plugins)
    out = tmp_path / "export"
    export_run(tmp_path / "run", out, defended=True, plugins=plugins)
    defended = pngs(out / "defended")
    edited = defended[0]
    edited.write_bytes(edited.read_bytes() + b"my notes")  # changed by the user since: no longer iqadef's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    thesis = elsewhere / "thesis.tex"
    thesis.write_text("years of work")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    (out / "lnk").symlink_to(elsewhere)
    mine = out / "notes.txt"
    mine.write_text("kept in the shared folder")
    with (out / MARKER).open("a") as f:  # the marker is a plain file in a shared folder: anyone can add lines
        for entry in ("lnk/thesis.tex", "../outside.txt", str(outside), "notes.txt"):  # the old marker format
            f.write(json.dumps(entry) + "\n")
        for path, rel in (
            (thesis, "lnk/thesis.tex"),
            (outside, "../outside.txt"),
            (outside, str(outside)),
            (mine, "lnk/../notes.txt"),
        ):  # with the right sha256: still not deleted
            f.write(json.dumps([rel, sha256(path)]) + "\n")
    export_run(tmp_path / "run", out, plugins=plugins)  # without --defended: D(x_a) files go
    assert thesis.read_text() == "years of work" and outside.read_text() == "mine" and mine.exists()
    assert (out / "lnk").is_symlink()
    assert [p for p in pngs(out / "defended")] == [edited]  # the edited one stays, the others are deleted
    assert len(pngs(out)) == 3 + 1


def test_export_does_not_write_through_a_symbolic_link(tmp_path, plugins):
    small_run(tmp_path, plugins)
    out = tmp_path / "export"
    export_run(tmp_path / "run", out, plugins=plugins)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "toy-metric" / "toy-sign").rename(tmp_path / "moved")
    (out / "toy-metric" / "toy-sign").symlink_to(elsewhere)
    with pytest.raises(IqadefError, match="is a symbolic link; an export writes only inside its folder"):
        export_run(tmp_path / "run", out, plugins=plugins)
    assert not any(elsewhere.iterdir())


# -- case 8: unique names, and an index that matches the files ----------------------------------------------
def test_names_are_unique_and_the_index_matches_the_files(tmp_path, plugins):
    for folder in ("sub1", "sub2"):
        for i in range(2):
            image(tmp_path / "imgs" / folder / f"x{i}.png", i + (folder == "sub2") * 10)
    image(tmp_path / "imgs" / "x0.jpg", 20, fmt="PNG")  # x0.jpg and x0.png would share "x0.png"
    image(tmp_path / "imgs" / "x0.png", 21)
    tags = ["a:b", "a?b", "a*b", "a_b", "A_B"]  # the first three were one folder: `/ : ? * ...` -> `_`
    defences = ", ".join(["no-defence", "toy-blur"] + [json.dumps({"name": "toy-tag", "tag": t}) for t in tags])
    run(
        tmp_path,
        plugins,
        f"dataset: imgs\noutput: run\nbatch_size: 2\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign, {{name: toy-sign, adaptive: bpda}}]\ndefences: [{defences}]\n",
    )
    summary = export_run(tmp_path / "run", tmp_path / "export", defended=True, plugins=plugins)
    index = pd.read_parquet(tmp_path / "export" / "index.parquet")
    files = pngs(tmp_path / "export")
    images, defence_count = 6, 7
    adversarial = images + images * defence_count  # plain x_a once per image, adaptive x_a per defence
    assert summary.adversarial == adversarial and summary.defended == 2 * images * defence_count
    assert len(index) == len(files) == adversarial + summary.defended
    on_disk = {p.relative_to(tmp_path / "export").as_posix(): sha256(p) for p in files}
    assert dict(zip(index["file"], index["sha256"])) == on_disk
    assert index["file"].str.lower().is_unique  # also on a file system that ignores letter case
    assert not any(c in part for part in on_disk for c in "*?[]")
    cells = index[index["kind"] == "defended"][["attack", "defence", "image"]]
    assert not cells.duplicated().any() and len(cells) == 2 * images * defence_count
    # the relative path is kept: sub1/x0.png and sub2/x0.png are two files
    plain = index[(index["kind"] == "adversarial") & (index["adaptive"] == "none")].set_index("image")["file"]
    assert plain["sub1/x0.png"].endswith("/sub1/x0.png") and plain["sub2/x0.png"].endswith("/sub2/x0.png")
    # read back: every file, with its own hash
    assert len(reader(tmp_path, plugins).open_dataset()) == adversarial
