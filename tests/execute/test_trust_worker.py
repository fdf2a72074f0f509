"""Issue 13, the worker's part: a result is either right or visibly failed.

A cell's identity holds its image's content; plugins that write into their inputs, break the output
contract, call sys.exit or hang fail their own cells (or stop the run, for a hang) and leave every other
cell as a clean run computes it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import toy_plugins
import trust_toys
from PIL import Image

from iqadef.analysis.scores import image_score_classes
from iqadef.config.registry import DEFAULT_UNIT_TIMEOUT, load_run_config
from iqadef.core.errors import ConfigError
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.execute import UnitTimeout, run_grid
from iqadef.execute.ray import ScoreTable
from iqadef.store.results import CELL_COLUMNS, ResultStore, row_checksum

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
examples: 1
metrics: {metrics}
attacks: {attacks}
defences: {defences}
{extra}
"""
DROP = ["image_path"]  # the only column that names the folder


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins, trust_toys], entry_points=False)


def config(
    tmp_path,
    images,
    registry,
    output="run",
    metrics="[toy-metric]",
    attacks="[toy-sign, toy-noise]",
    defences="[no-defence, toy-blur, toy-noise-defence]",
    extra="",
):
    path = tmp_path / f"{output}.yaml"
    path.write_text(
        GRID.format(images=images, output=output, metrics=metrics, attacks=attacks, defences=defences, extra=extra)
    )
    return load_run_config(path, plugins=registry)


def run(cfg, registry, **kwargs):
    return run_grid(cfg, plugins=registry, progress=False, **kwargs)


def table(summary) -> pd.DataFrame:
    return pd.read_parquet(summary.run_dir / "results.parquet")


def rows(df: pd.DataFrame, **where) -> pd.DataFrame:
    for column, value in where.items():
        df = df[df[column] == value]
    return df.drop(columns=DROP + ["unit"], errors="ignore").reset_index(drop=True)


def copy_images(src: Path, dst: Path, rename=lambda name: name) -> Path:
    dst.mkdir()
    for path in sorted(src.iterdir()):
        shutil.copy(path, dst / rename(path.name))
    return dst


def with_scores(*names: str):
    """The built-in per-image scores plus the named toy scores (what the worker computes per cell)."""
    return ScoreTable([*image_score_classes(installed_plugins()), *(trust_toys.SCORES[n] for n in names)])


# -- 1. the image's content is part of a cell's identity -------------------------------------------------
def test_an_image_replaced_under_the_same_name_is_recomputed(tmp_path, image_dir, registry):
    cfg = config(tmp_path, image_dir, registry)
    run(cfg, registry)
    other = np.asarray(Image.open(image_dir / "img1.png"))[::-1].copy()  # other pixels, same size
    Image.fromarray(other).save(image_dir / "img0.png")
    again = run(cfg, registry)
    # img0 and its batch partner img1 (their batch changed): 2 images x 2 attacks x 3 defences
    assert again.computed == 12 and again.skipped == 24
    fresh = run(config(tmp_path, image_dir, registry, "fresh"), registry)
    pd.testing.assert_frame_equal(rows(table(again)), rows(table(fresh)))


def test_a_rename_that_keeps_the_order_reuses_the_stored_cells(tmp_path, image_dir, registry):
    cfg = config(tmp_path, image_dir, registry)
    run(cfg, registry)
    renamed = copy_images(image_dir, tmp_path / "renamed", lambda name: name.replace("img", "pic"))
    moved = config(tmp_path, renamed, registry)  # same output folder, renamed files
    again = run(moved, registry)
    assert again.computed == 0 and again.relabelled == 36 and again.skipped == 36
    fresh = run(config(tmp_path, renamed, registry, "fresh"), registry)
    a, b = rows(table(again)), rows(table(fresh))
    assert set(a["image"]) == {f"pic{i}.png" for i in range(6)}
    pd.testing.assert_frame_equal(a, b)
    assert (moved.output / a.loc[a["example_path"] != "", "example_path"].iloc[0]).is_file()


def test_a_rename_that_changes_the_batches_recomputes_them(tmp_path, image_dir, registry):
    cfg = config(tmp_path, image_dir, registry)
    run(cfg, registry)
    (image_dir / "img0.png").rename(image_dir / "img9.png")  # now last of its size group: batches shift
    again = run(cfg, registry)
    assert again.computed == 24  # the four 24x24 images' batches changed; the 16x20 batch did not
    fresh = run(config(tmp_path, image_dir, registry, "fresh"), registry)
    pd.testing.assert_frame_equal(rows(table(again)), rows(table(fresh)))


def test_two_names_with_identical_content_keep_their_own_cells(tmp_path, image_dir, registry):
    shutil.copy(image_dir / "img0.png", image_dir / "img1.png")  # same batch, same bytes
    full = run(config(tmp_path, image_dir, registry, "full"), registry)
    cfg = config(tmp_path, image_dir, registry)
    run(cfg, registry)
    store = ResultStore(cfg.output)
    store.db.execute("DELETE FROM cells WHERE defence = 'toy-blur'")  # a resume recomputes these from the cache
    store.close()
    again = run(cfg, registry)
    assert again.computed == 12
    pd.testing.assert_frame_equal(rows(table(again)), rows(table(full)))
    noise = rows(table(full), attack="toy-noise", defence="no-defence")
    pair = noise[noise["image"].isin(["img0.png", "img1.png"])]
    assert pair["f_adv"].nunique() == 2  # the seeded noise differs by position in the batch


def test_a_store_from_before_image_hashes_is_recomputed(tmp_path, image_dir, registry):
    cfg = config(tmp_path, image_dir, registry)
    run(cfg, registry)
    con = sqlite3.connect(cfg.output / "results.sqlite")
    con.execute("UPDATE cells SET image_sha256 = NULL, batch_key = NULL")  # what an older store holds,
    columns = [c for c in CELL_COLUMNS]
    for rowid, *values in con.execute(f"SELECT rowid, {', '.join(columns)} FROM cells").fetchall():
        con.execute(
            "UPDATE cells SET checksum = ? WHERE rowid = ?",  # sealed as an older store's rows are
            (row_checksum(dict(zip(columns, values))), rowid),
        )
    con.commit()
    con.close()
    store = ResultStore(cfg.output)
    finished = store.finished()  # intact rows (no checksum warning), but nothing says what they came from
    store.close()
    assert len(finished) == 36 and {key[4:] for key in finished} == {(None, None)}
    assert run(cfg, registry).computed == 36


# -- 2. plugins that write into their inputs ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["mul_", "data", "numpy"])
def test_a_defence_writing_into_its_input_fails_its_cells_and_later_cells_are_right(tmp_path, image_dir, registry, how):
    bad = run(
        config(
            tmp_path,
            image_dir,
            registry,
            "bad",
            defences=f"[{{name: toy-inplace, how: {how}}}, toy-blur, toy-noise-defence]",
        ),
        registry,
    )
    good = run(config(tmp_path, image_dir, registry, "good", defences="[toy-blur, toy-noise-defence]"), registry)
    df = table(bad)
    offender = df[df["defence"].str.startswith("toy-inplace")]
    assert len(offender) == 12 and (offender["status"] == "failed").all()
    assert offender["error"].str.contains(r"defence 'toy-inplace.*' modified its input \(.*\) in place").all()
    others = df[~df["defence"].str.startswith("toy-inplace")].reset_index(drop=True)
    assert (others["status"] == "ok").all()
    pd.testing.assert_frame_equal(rows(others), rows(table(good)))


@pytest.mark.parametrize("how", ["mul_", "data"])
def test_a_metric_normalising_its_input_in_place_fails_its_cells_only(tmp_path, image_dir, registry, how):
    bad = run(
        config(
            tmp_path, image_dir, registry, "bad", metrics=f"[{{name: toy-normalise-inplace, how: {how}}}, toy-metric]"
        ),
        registry,
    )
    good = run(config(tmp_path, image_dir, registry, "good"), registry)
    df = table(bad)
    offender = df[df["metric"].str.startswith("toy-normalise-inplace")]
    assert (offender["status"] == "failed").all()
    assert offender["error"].str.contains("metric 'toy-normalise-inplace.*' modified its input").all()
    pd.testing.assert_frame_equal(rows(df, metric="toy-metric"), rows(table(good)))


def test_a_metric_writing_into_the_attacks_images_fails_the_attacks_cells(tmp_path, image_dir, registry):
    df = table(
        run(config(tmp_path, image_dir, registry, metrics="[toy-grad-inplace-metric]", attacks="[toy-sign]"), registry)
    )
    assert (df["status"] == "failed").all()
    assert (
        df["error"].str.contains(r"metric 'toy-grad-inplace-metric' modified its input \(the attack's images\)").all()
    )


def test_a_defence_writing_into_an_adaptive_attacks_images_fails_its_cells(tmp_path, image_dir, registry):
    df = table(
        run(
            config(
                tmp_path,
                image_dir,
                registry,
                attacks="[{name: toy-sign, adaptive: bpda}]",
                defences="[no-defence, toy-grad-inplace]",
            ),
            registry,
        )
    )
    offender = df[df["defence"] == "toy-grad-inplace"]
    assert (offender["status"] == "failed").all()
    assert offender["error"].str.contains("defence 'toy-grad-inplace' modified its input").all()
    assert (df.loc[df["defence"] == "no-defence", "status"] == "ok").all()


@pytest.mark.parametrize(
    "score, message",
    [
        ("toy-score-inplace", r"score 'toy-score-inplace' modified its input \(f\(x\)\) in place"),
        ("toy-score-data", r"score 'toy-score-data' modified its input \(the clean images x\) in place"),
        ("toy-score-memo", r"score 'toy-score-memo' modified its input \(the shared pair measure 'toy-mse'\)"),
    ],
)
def test_a_score_writing_into_the_cells_fails_them_naming_it(tmp_path, image_dir, registry, score, message):
    df = table(
        run(
            config(tmp_path, image_dir, registry, attacks="[toy-sign]", defences="[no-defence, toy-blur]"),
            with_scores(score),
        )
    )
    assert (df["status"] == "failed").all() and df["error"].str.contains(message).all()


# -- 3. the output contract --------------------------------------------------------------------------------
def test_a_metric_returning_one_score_per_pixel_fails_with_what_was_expected(tmp_path, image_dir, registry):
    df = table(
        run(
            config(
                tmp_path,
                image_dir,
                registry,
                metrics="[toy-per-pixel, toy-column]",
                attacks="[toy-noise]",
                defences="[no-defence]",
            ),
            registry,
        )
    )
    pixel = df[df["metric"] == "toy-per-pixel"]
    assert (pixel["status"] == "failed").all()
    assert (
        pixel["error"]
        .str.contains(
            r"metric 'toy-per-pixel' returned shape \[2, (?:24, 24|16, 20)\], "
            r"expected \[2\]"
        )
        .all()
    )
    assert (df.loc[df["metric"] == "toy-column", "status"] == "ok").all()  # [B, 1] is accepted


@pytest.mark.parametrize(
    "score, message",
    [
        ("toy-score-wide", r"score 'toy-score-wide' returned shape \[2, 2\] for 'toy_wide', expected 2 value"),
        ("toy-score-reserved", r"score 'toy-score-reserved' returned a column named 'status'"),
    ],
)
def test_a_score_breaking_the_output_contract_fails_with_what_was_expected(
    tmp_path, image_dir, registry, score, message
):
    df = table(
        run(config(tmp_path, image_dir, registry, attacks="[toy-noise]", defences="[no-defence]"), with_scores(score))
    )
    assert (df["status"] == "failed").all() and df["error"].str.contains(message).all()


def test_a_score_returning_a_list_of_floats_is_stored(tmp_path, image_dir, registry):
    df = table(
        run(
            config(tmp_path, image_dir, registry, attacks="[toy-noise]", defences="[no-defence]"),
            with_scores("toy-score-list"),
        )
    )
    assert (df["status"] == "ok").all()
    assert sorted(df["toy_list"].unique()) == [0.0, 1.0]


# -- 10. SystemExit (any BaseException but KeyboardInterrupt) from a plugin --------------------------------
def test_sys_exit_in_purify_fails_that_defences_cells_and_the_grid_goes_on(tmp_path, image_dir, registry):
    summary = run(config(tmp_path, image_dir, registry, defences="[toy-exit, toy-blur]"), registry)
    df = table(summary)
    exits = df[df["defence"] == "toy-exit"]
    assert len(df) == 24 and (exits["status"] == "failed").all()
    assert exits["error"].str.contains("defence 'toy-exit' raised SystemExit: 3").all()
    assert (df.loc[df["defence"] == "toy-blur", "status"] == "ok").all()


def test_sys_exit_in_a_metric_or_a_score_fails_their_cells(tmp_path, image_dir, registry):
    df = table(
        run(
            config(
                tmp_path,
                image_dir,
                registry,
                metrics="[toy-exit-metric, toy-metric]",
                attacks="[toy-noise]",
                defences="[no-defence]",
            ),
            registry,
        )
    )
    assert (
        df.loc[df["metric"] == "toy-exit-metric", "error"]
        .str.contains("metric 'toy-exit-metric' raised SystemExit: 3")
        .all()
    )
    assert (df.loc[df["metric"] == "toy-metric", "status"] == "ok").all()
    scored = table(
        run(
            config(tmp_path, image_dir, registry, "scored", attacks="[toy-noise]", defences="[no-defence]"),
            with_scores("toy-score-exit"),
        )
    )
    assert scored["error"].str.contains("score 'toy-score-exit' raised SystemExit: 3").all()


# -- 11. unit_timeout -------------------------------------------------------------------------------------
def test_a_hanging_plugin_stops_the_run_naming_it_and_finished_units_are_kept(tmp_path, image_dir, registry):
    trust_toys.RELEASE.clear()
    cfg = config(
        tmp_path, image_dir, registry, attacks="[toy-noise]", defences="[no-defence, toy-hang]", extra="unit_timeout: 1"
    )
    start = time.monotonic()
    try:
        with pytest.raises(
            UnitTimeout,
            match=r"unit 0/0/2 \(metric 'toy-metric', attack 'toy-noise', 2 image\(s\) "
            r"img4.png .. img5.png\) did not finish within unit_timeout: 1 s; it was "
            r"running defence 'toy-hang' \(purify\)\. .*the 2 unit\(s\) finished",
        ):
            run(cfg, registry)
        assert time.monotonic() - start < 30
    finally:
        trust_toys.RELEASE.set()  # the abandoned thread finishes its unit and ends
    store = ResultStore(cfg.output)
    assert len(store.finished()) == 2 * 2 * 2  # the two 24x24 batches x 2 defences
    store.close()
    resumed = run(cfg, registry)  # released: the hang is gone, the resume does the rest
    assert resumed.computed == 4 and resumed.skipped == 8


@pytest.mark.parametrize(
    "value, ok",
    [("null", None), ("7200", 7200.0), ("0.5", 0.5), ("0", False), ("-1", False), ("an hour", False), ("true", False)],
)
def test_unit_timeout_is_validated(tmp_path, image_dir, registry, value, ok):
    if ok is False:
        with pytest.raises(ConfigError, match=r"unit_timeout: .* must be a number of seconds > 0, or null"):
            config(tmp_path, image_dir, registry, extra=f"unit_timeout: {value}")
    else:
        assert config(tmp_path, image_dir, registry, extra=f"unit_timeout: {value}").unit_timeout == ok
    assert config(tmp_path, image_dir, registry, "default").unit_timeout == DEFAULT_UNIT_TIMEOUT == 3600


@pytest.mark.slow
def test_the_cli_exits_with_one_line_when_a_unit_hangs(tmp_path, image_dir):
    """The stuck thread (busy in torch) neither keeps the process alive nor aborts it at exit: exit
    status 2, one line, no traceback."""
    import subprocess

    site = toy_plugins.install_as_distribution(tmp_path)
    shutil.copy(Path(trust_toys.__file__), site / "trust_toys.py")
    info = site / "iqadef_trust_toys-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: iqadef-trust-toys\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[iqadef]\ntrust = trust_toys\n")
    registry_file = tmp_path / "hang.yaml"
    registry_file.write_text(
        GRID.format(
            images=image_dir,
            output="run",
            metrics="[toy-metric]",
            attacks="[toy-noise]",
            defences="[{name: toy-hang, busy: true}]",
            extra="unit_timeout: 2",
        )
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-m", "iqadef", "run", str(registry_file), "--no-report"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: unit 0/0/2") and "defence 'toy-hang[busy=True]' (purify)" in lines[-1]
    assert "Traceback" not in proc.stderr
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM cells WHERE status = 'ok'").fetchone()[0] == 4


# -- the guard changes nothing when plugins behave -----------------------------------------------------------
def test_the_guard_leaves_a_well_behaved_grid_bit_identical(tmp_path, image_dir, registry):
    from iqadef.core.dataset import Dataset
    from iqadef.execute import Unit, Worker

    cfg = config(tmp_path, image_dir, registry)
    dataset = Dataset(cfg.images)
    units = [Unit(0, a, b, (0, 1, 2)) for a in range(2) for b in range(3)]
    out = {}
    for guard in (True, False):
        worker = Worker(cfg, dataset, cfg.output, lambda key: None, torch.device("cpu"), registry, guard_inputs=guard)
        out[guard] = [row for unit in units for row in worker.compute(unit).rows]
    as_text = [json.dumps(rows_, sort_keys=True) for rows_ in (out[True], out[False])]  # NaN MOS equals NaN here
    assert as_text[0] == as_text[1] and all(r["status"] == "ok" for r in out[True])
