"""Cost of the store's integrity checks (issue 13, items 5 and 9), written to results/store_integrity.json.

A run reads the store twice (``finished`` at the start, ``dataframe`` for the export) and now verifies each
row's checksum both times, and at the start checks that every example PNG still reads (``Image.verify``).
Timed against what the same calls did before (keys only; ``pd.read_sql_query``), interleaved and repeated
(``_bench.interleaved``), on a store the size of the default grid (14 images x 10 attacks x 21 defences)
and on a ten times larger one. ``python benchmarks/store_integrity.py [--quick]``
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sqlite3
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import interleaved, med, median_ratio  # noqa: E402

from iqadef.store.results import CELL_COLUMNS, KEY_COLUMNS, ResultStore, _readable_png  # noqa: E402

DEFAULT_GRID_CELLS = 14 * 10 * 21
EXAMPLES = 2 * 10 * 21  # examples: 2 images per metric x attack x defence


def fake_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    return [{"metric_key": "m" * 64, "attack_key": f"a{i % 10}" * 8, "defence_key": f"d{i % 21}" * 8,
             "image": f"img{i // 210}_{i}.png", "image_sha256": "f" * 64, "batch_key": "b" * 18, "metric": "tiny-iqa",
             "attack": f"attack{i % 10}", "defence": f"defence{i % 21}", "metric_params": {},
             "attack_params": {"eps": 0.03}, "defence_params": {"quality": 50}, "adaptive": "none",
             "image_path": "/data/images/x.png", "status": "ok", "error": "", "f_clean": rng.random(),
             "f_adv": rng.random(), "f_def_clean": rng.random(), "f_def_adv": rng.random(), "mos": float("nan"),
             "adv_path": "cache/adv/ab/" + "c" * 64 + ".png", "example_path": "",
             "scores": {f"score{k}": rng.random() for k in range(40)}, "unit": "0/1/2"} for i in range(n)]


def before_finished(db: sqlite3.Connection) -> set:
    return {tuple(r) for r in db.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM cells WHERE status = 'ok'")}


def before_dataframe(db: sqlite3.Connection) -> pd.DataFrame:
    df = pd.read_sql_query(f"SELECT {', '.join(CELL_COLUMNS)} FROM cells", db)
    scores = pd.DataFrame([json.loads(s) if s else {} for s in df.pop("scores")], index=df.index)
    df = pd.concat([df, scores], axis=1)
    return df.sort_values(["metric", "attack", "defence", "image"], kind="stable").reset_index(drop=True)


def store_section(n: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp))
        rows = fake_rows(n)
        start = time.perf_counter()
        store.write_cells(rows)
        write_s = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            times = interleaved({"checked": lambda: (store.finished(), store.dataframe()),
                                 "before": lambda: (before_finished(store.db), before_dataframe(store.db))},
                                repeats=repeats)
        store.close()
    return {"rows": n, "write_cells_s": write_s, "checked_s": med(times["checked"]),
            "before_s": med(times["before"]), "ratio": median_ratio(times["checked"], times["before"]),
            "extra_s": med(times["checked"]) - med(times["before"])}


def examples_section(count: int) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buffer, "PNG", compress_level=1)
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(buffer.getvalue())
            paths.append(path)
        start = time.perf_counter()
        ok = all(_readable_png(p) for p in paths)
        seconds = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
    return {"files": count, "size_mb": size_mb, "verify_s": seconds, "all_readable": ok}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    out = {"quick": args.quick, "default_grid": store_section(DEFAULT_GRID_CELLS, repeats),
           "ten_times": store_section(10 * DEFAULT_GRID_CELLS, max(2, repeats // 2)),
           "examples": examples_section(EXAMPLES)}
    target = Path(__file__).resolve().parent / "results" / "store_integrity.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
