"""Every stored row carries a checksum: a value changed inside results.sqlite is found, recomputed on resume
and never exported as ok (issue 13, item 5)."""

from __future__ import annotations

import sqlite3
import struct
import warnings

import pandas as pd
import pytest
from toy_plugins import small_grid_config as config

from iqadef.execute import run_grid
from iqadef.store.results import CELL_COLUMNS, CHECKSUM_ERROR, ResultStore, StorageWarning, row_checksum


def checkpoint(db) -> None:
    """Move everything from the WAL into results.sqlite, so the file holds every row."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def row(**values):
    base = {c: "" for c in CELL_COLUMNS if not (c.startswith("f_") or c in ("mos", "queries"))}
    base.update(
        metric_key="m",
        attack_key="a",
        defence_key="d",
        image="i.png",
        metric="toy",
        attack="atk",
        defence="def",
        status="ok",
        f_clean=50.0,
        f_adv=60.0,
        f_def_clean=51.0,
        f_def_adv=55.0,
        mos=float("nan"),
        scores={"gain": 0.1, "psnr_x_xa": 30.0},
    )
    base.update(values)
    return base


def test_a_flipped_bit_inside_results_sqlite_is_found_and_recomputed(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry, "run")
    first = run_grid(cfg, plugins=toy_registry, progress=False)
    before = pd.read_parquet(first.run_dir / "results.parquet")
    target = before[(before["image"] == "img3.png") & (before["defence"] == "toy-blur")].iloc[0]
    db = cfg.output / "results.sqlite"
    checkpoint(db)
    data = bytearray(db.read_bytes())
    stored = struct.pack(">d", target["f_def_adv"])  # SQLite keeps a REAL as a big-endian double
    assert data.count(stored) == 1
    data[data.index(stored) + 7] ^= 0x01  # the lowest bit of the mantissa: a change a reader cannot see
    db.write_bytes(bytes(data))

    with pytest.warns(
        StorageWarning, match="1 stored cell.* fail their checksum.*toy-metric / toy-sign / toy-blur / img3.png"
    ):
        again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert again.computed == 2 and again.failed == 0  # the cell's batch of two images, for that defence
    after = pd.read_parquet(again.run_dir / "results.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_a_changed_row_is_exported_as_failed_with_the_reason(tmp_path):
    store = ResultStore(tmp_path)
    store.write_cells([row(image="a.png"), row(image="b.png")])
    store.db.execute("UPDATE cells SET f_def_adv = 56.0 WHERE image = 'b.png'")
    with pytest.warns(StorageWarning, match="1 stored cell.*toy / atk / def / b.png"):
        df = store.dataframe()
    bad = df.set_index("image").loc["b.png"]
    assert bad["status"] == "failed" and bad["error"].startswith(CHECKSUM_ERROR)
    assert df.set_index("image").loc["a.png", "status"] == "ok"
    with pytest.warns(StorageWarning):
        assert len(store.finished()) == 1  # b.png is computed again on resume


@pytest.mark.parametrize("column", [c for c in CELL_COLUMNS])
def test_a_change_in_any_column_fails_the_checksum(tmp_path, column):
    store = ResultStore(tmp_path)
    status = "failed" if column == "status" else "ok"  # a failed cell turned "ok" must not count as done
    store.write_cells([row(image_path="/x/i.png", unit="0/0/0", adv_path="cache/adv/ab/x.png", status=status)])
    real = column.startswith("f_") or column in ("mos", "queries")
    store.db.execute(f"UPDATE cells SET {column} = ?", (7.25 if real else "ok" if column == "status" else "changed",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StorageWarning)
        assert store.finished() == set()


def test_values_read_back_exactly_keep_their_checksum(tmp_path):
    """NaN (stored as NULL), -0.0 (read back as 0.0), inf, long floats and unicode all verify."""
    store = ResultStore(tmp_path)
    store.write_cells(
        [
            row(
                f_clean=-0.0,
                f_adv=float("inf"),
                f_def_clean=0.1 + 0.2,
                mos=float("nan"),
                error="ü — \u2603",
                scores={"gain": -0.0, "psnr": float("nan")},
            )
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", StorageWarning)
        assert len(store.finished()) == 1
        assert store.dataframe()["status"].tolist() == ["ok"]


def test_a_column_added_later_keeps_older_rows_valid(tmp_path):
    """The checksum is over named, non-NULL columns: a new column (NULL in old rows) changes nothing."""
    values = {c: "x" for c in ("metric", "attack", "status")}
    assert row_checksum(values) == row_checksum({**values, "new_column": None})
    assert row_checksum(values) != row_checksum({**values, "new_column": "y"})
    assert row_checksum({"a": 1.0}) != row_checksum({"a": 1.0000000000000002})


def test_an_older_store_without_checksums_is_migrated(tmp_path):
    """A store of an older version: the column is added and its rows sealed as they are; later changes are found."""
    con = sqlite3.connect(tmp_path / "results.sqlite")
    columns = [c for c in CELL_COLUMNS if c not in ("image_sha256", "batch_key")]
    con.execute(f"CREATE TABLE cells ({', '.join(columns)}, PRIMARY KEY (metric_key, attack_key, defence_key, image))")
    con.execute(
        "INSERT INTO cells (metric_key, attack_key, defence_key, image, metric, attack, defence, status, "
        "f_clean) VALUES ('m', 'a', 'd', 'i.png', 'toy', 'atk', 'def', 'ok', 1.5)"
    )
    con.commit()
    con.close()
    store = ResultStore(tmp_path)
    assert store.get_meta("checksums_added_to_rows") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", StorageWarning)
        assert store.dataframe()["status"].tolist() == ["ok"]
    store.db.execute("UPDATE cells SET f_clean = 1.25")
    with pytest.warns(StorageWarning, match="fail their checksum"):
        assert store.dataframe()["status"].tolist() == ["failed"]
    store.close()
    assert ResultStore(tmp_path).get_meta("checksums_added_to_rows") == 1  # sealed once, not again
