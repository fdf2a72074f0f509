"""`iqadef verify RUN_DIR`: stored cells recomputed from scratch match, and each kind of wrong cell is caught:
an image replaced under its name (issue 13, case 1), values a careless plugin left in the store (case 2,
written here through sqlite), a flipped value in results.sqlite (case 5)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import toy_plugins
from PIL import Image

from iqadef import cli
from iqadef.config.registry import load_run_config
from iqadef.core.errors import IqadefError
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid
from iqadef.execute.verify import close, verify_run

GRID = """
dataset: {{images: {images}}}
output: run
batch_size: 2
seed: 3
examples: 1
metrics: [toy-metric]
attacks: [toy-sign, toy-noise]
defences: [no-defence, toy-blur, toy-noise-defence]
"""
CELLS = 36


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins(extra=[toy_plugins], entry_points=False)


@pytest.fixture()
def run_dir(tmp_path, image_dir, registry) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(images=image_dir))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    assert summary.failed == 0
    return summary.run_dir


def execute(db: Path, sql: str, *params) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(sql, params)
    con.close()


def test_every_stored_cell_recomputed_from_scratch_matches(run_dir, registry):
    verdict = verify_run(run_dir, cells=CELLS, seed=0, plugins=registry)
    assert verdict.ok and verdict.checked == verdict.matched == verdict.candidates == CELLS
    shutil.rmtree(run_dir / "cache")  # nothing is read from the cache: x_a is recomputed by the attack
    verdict = verify_run(run_dir, cells=CELLS, seed=0, plugins=registry)
    assert len(verdict.mismatches) == CELLS and verdict.matched == 0
    # the only difference found is the missing file: every recomputed value still equals the stored one
    assert all(
        problem.startswith("adv_path 'cache/adv/")
        and problem.endswith("does not exist; resume the run to write it again")
        and ";" not in problem.split("does not exist")[0]
        for _, problem in verdict.mismatches
    )
    assert not (run_dir / "cache").exists()  # and nothing is written


def test_an_image_replaced_under_its_name_is_a_mismatch(run_dir, image_dir, registry):
    other = np.asarray(Image.open(image_dir / "img3.png"))[:, ::-1].copy()
    Image.fromarray(other).save(image_dir / "img2.png")
    verdict = verify_run(run_dir, cells=CELLS, seed=0, plugins=registry)
    changed = [problem for label, problem in verdict.mismatches if label.endswith("/ img2.png")]
    assert len(changed) == 6 and all("the image file changed since this cell was computed" in p for p in changed)
    partner = [problem for label, problem in verdict.mismatches if label.endswith("/ img3.png")]
    assert len(partner) == 6 and all("the images batched with it changed" in p for p in partner)
    assert verdict.matched == CELLS - 12


def test_a_wrong_value_in_the_store_is_found_with_its_size(run_dir, registry):
    # what a defence writing into x left behind before the guard existed: a wrong f(D(x_a)), marked ok
    execute(
        run_dir / "results.sqlite",
        "UPDATE cells SET f_def_adv = f_def_adv * 0.5 "
        "WHERE image = 'img4.png' AND defence = 'toy-blur' AND attack = 'toy-sign'",
    )
    verdict = verify_run(run_dir, cells=CELLS, seed=0, plugins=registry)
    assert verdict.matched == CELLS - 1 and len(verdict.mismatches) == 1
    label, problem = verdict.mismatches[0]
    assert label == "toy-metric / toy-sign / toy-blur / img4.png"
    assert problem.startswith("f_def_adv: stored ") and "(|diff| " in problem and "50.00%" in problem


def test_a_flipped_score_in_results_sqlite_is_found(run_dir, registry):
    db = run_dir / "results.sqlite"
    con = sqlite3.connect(db)
    (scores,) = con.execute(
        "SELECT scores FROM cells WHERE image = 'img0.png' AND defence = 'no-defence' AND attack = 'toy-noise'"
    ).fetchone()
    con.close()
    values = json.loads(scores)
    values["psnr_x_xa"] = -values["psnr_x_xa"]  # a flipped sign bit
    execute(
        db,
        "UPDATE cells SET scores = ? WHERE image = 'img0.png' AND defence = 'no-defence' AND attack = 'toy-noise'",
        json.dumps(values, sort_keys=True),
    )
    verdict = verify_run(run_dir, cells=CELLS, seed=1, plugins=registry)
    assert [label for label, _ in verdict.mismatches] == ["toy-metric / toy-noise / no-defence / img0.png"]
    assert verdict.mismatches[0][1].startswith("psnr_x_xa: stored -")


def test_a_sample_is_reproducible_by_its_seed(run_dir, registry):
    first = verify_run(run_dir, cells=5, seed=7, plugins=registry)
    again = verify_run(run_dir, cells=5, seed=7, plugins=registry)
    assert first.ok and first.checked == again.checked == 5 and first.seed == again.seed == 7


def test_tolerance_is_float32_sized():
    assert close(1.0, 1.0 + 1e-6) and not close(1.0, 1.001)
    assert close(None, float("nan")) and close(float("inf"), float("inf")) and not close(float("inf"), 1e300)


def test_cli_exit_status_0_1_2(run_dir, registry, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_plugins", lambda: registry)
    assert cli.main(["verify", str(run_dir), "--cells", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 of 36 stored cell(s) recomputed from scratch (--seed 2): 4 match, 0 differ" in out
    execute(run_dir / "results.sqlite", "UPDATE cells SET f_clean = f_clean + 1")
    assert cli.main(["verify", str(run_dir), "--cells", "3", "--seed", "2"]) == 1
    out = capsys.readouterr().out
    assert (
        out.count("MISMATCH toy-metric / ") == 36 and out.count("f_clean: stored") == 3 and "0 match, 3 differ" in out
    )
    assert out.count("the row fails its checksum") == 36 and "33 other stored cell(s) fail the checks" in out
    assert cli.main(["verify", str(run_dir / "nothing-here")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli.main(["verify", str(run_dir), "--cells", "0"]) == 2
    (run_dir / "run.json").write_text("{broken")
    assert cli.main(["verify", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "run.json: cannot be read" in err and "Traceback" not in err


def test_an_empty_or_foreign_folder_is_refused(tmp_path, registry):
    with pytest.raises(IqadefError, match=r"run.json: missing; is .* a run folder"):
        verify_run(tmp_path, plugins=registry)


# -- rows that are wrong without their values being wrong (issue "Trust, round 3", case 5) -------------------
def edit_row(db: Path, where: str, reseal: bool, **values) -> None:
    """Change one stored row; ``reseal``: recompute its checksum too (an edit made to look written)."""
    from iqadef.store.results import CELL_COLUMNS, row_checksum

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    with con:
        row = dict(con.execute(f"SELECT * FROM cells WHERE {where}").fetchone())
        row.update(values)
        checksum = row_checksum({c: row[c] for c in CELL_COLUMNS}) if reseal else row["checksum"]
        con.execute(
            f"UPDATE cells SET {', '.join(f'{c} = ?' for c in values)}, checksum = ? WHERE {where}",
            (*values.values(), checksum),
        )
    con.close()


ONE = "image = 'img1.png' AND attack = 'toy-sign' AND defence = 'toy-blur'"
ONE_LABEL = "toy-metric / toy-sign / toy-blur / img1.png"


def test_an_edited_mos_is_found_in_a_cell_not_recomputed(run_dir, registry):
    edit_row(run_dir / "results.sqlite", ONE, reseal=False, mos=4.5)
    verdict = verify_run(run_dir, cells=1, seed=0, plugins=registry)
    [(label, problem)] = verdict.mismatches
    assert label == ONE_LABEL
    assert "the row fails its checksum" in problem and "mos: stored 4.5, the dataset gives None" in problem
    assert verdict.checked == 1 and verdict.unsampled == 1  # found without recomputing it


def test_a_row_relabelled_with_its_checksum_recomputed_is_a_mismatch(run_dir, registry):
    edit_row(run_dir / "results.sqlite", ONE, reseal=True, defence="toy-noise-defence")
    verdict = verify_run(run_dir, cells=1, seed=0, plugins=registry)
    [(label, problem)] = verdict.mismatches
    assert label == "toy-metric / toy-sign / toy-noise-defence / img1.png"
    assert problem == ("defence: stored 'toy-noise-defence', run.json's registry gives 'toy-blur' for its keys")


def test_a_changed_adv_path_is_a_mismatch(run_dir, registry, monkeypatch, capsys):
    db = run_dir / "results.sqlite"
    con = sqlite3.connect(db)
    (other,) = con.execute("SELECT adv_path FROM cells WHERE image = 'img0.png' AND attack = 'toy-sign'").fetchone()
    con.close()
    edit_row(db, ONE, reseal=True, adv_path=other)  # another cached x_a, intact and recorded: only its key differs
    verdict = verify_run(run_dir, cells=CELLS, seed=0, plugins=registry)
    [(label, problem)] = verdict.mismatches
    assert label == ONE_LABEL and problem.startswith(f"adv_path: stored {other!r}, its keys give 'cache/adv/")
    edit_row(db, ONE, reseal=True, adv_path="cache/adv/00/nothing.png")  # a path the store never recorded
    verdict = verify_run(run_dir, cells=1, seed=0, plugins=registry)
    assert [label for label, _ in verdict.mismatches] == [ONE_LABEL]
    assert "no file of that name is recorded in the store's artifacts" in verdict.mismatches[0][1]
    monkeypatch.setattr(cli, "_plugins", lambda: registry)
    assert cli.main(["verify", str(run_dir), "--cells", "1", "--seed", "0"]) == 1
    assert "1 other stored cell(s) fail the checks" in capsys.readouterr().out


def test_a_replaced_x_a_file_is_a_mismatch(run_dir, registry):
    con = sqlite3.connect(run_dir / "results.sqlite")
    (rel,) = con.execute(f"SELECT adv_path FROM cells WHERE {ONE}").fetchone()
    con.close()
    path = run_dir / rel
    Image.fromarray(np.asarray(Image.open(path))[::-1].copy()).save(path)  # a valid PNG, other pixels
    verdict = verify_run(run_dir, cells=1, seed=0, plugins=registry)
    bad = {label for label, problem in verdict.mismatches if "its sha256 is not the one the store recorded" in problem}
    assert ONE_LABEL in bad and len(bad) == len(verdict.mismatches) == 3  # x_a of a plain attack serves 3 defences
