from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import toy_plugins

from iqadef.config.registry import load_run_config
from iqadef.core.errors import RunLockedError
from iqadef.execute import run_grid
from iqadef.store.results import ResultStore, RunLock

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
examples: 1
metrics: [toy-metric]
attacks: [toy-sign, toy-noise]
defences: [no-defence, toy-blur, toy-noise-defence]
"""


def config(tmp_path, image_dir, registry, output="run", text=GRID):
    path = tmp_path / f"{output}.yaml"
    path.write_text(text.format(images=image_dir, output=output))
    return load_run_config(path, plugins=registry)


def frame(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


def test_grid_records_every_cell_and_shares_adversarial_images(tmp_path, image_dir, toy_registry):
    summary = run_grid(config(tmp_path, image_dir, toy_registry), plugins=toy_registry, progress=False)
    df = frame(summary.run_dir)
    assert len(df) == 6 * 2 * 3 == summary.total == summary.computed
    assert (df["status"] == "ok").all() and summary.failed == 0
    # one adversarial PNG per (metric, attack, image), shared by the three defences
    assert len(list((summary.run_dir / "cache" / "adv").rglob("*.png"))) == 6 * 2
    assert df.groupby(["attack", "image"])["adv_path"].nunique().eq(1).all()
    # the identity defence changes nothing; the sign attack raises the metric
    ident = df[df["defence"] == "no-defence"]
    assert (ident["f_def_adv"] - ident["f_adv"]).abs().max() < 1e-6
    assert (ident["f_def_clean"] - ident["f_clean"]).abs().max() < 1e-6
    sign = ident[ident["attack"] == "toy-sign"]
    assert (sign["f_adv"] > sign["f_clean"]).all()
    # f(x) is the same for every attack and defence of an image
    assert df.groupby("image")["f_clean"].nunique().eq(1).all()
    # examples: D(x_a) kept for the first image only
    assert set(df.loc[df["example_path"] != "", "image"]) == {"img0.png"}
    assert (summary.run_dir / "results.csv").is_file()
    assert set(summary.table["defence"]) == {"no-defence", "toy-blur", "toy-noise-defence"}


def test_interrupted_run_resumes_to_the_uninterrupted_table(tmp_path, image_dir, toy_registry):
    full = run_grid(config(tmp_path, image_dir, toy_registry, "full"), plugins=toy_registry, progress=False)

    class Stop(Exception):
        pass

    def stop_after(n):
        if n == 3:
            raise Stop

    cfg = config(tmp_path, image_dir, toy_registry, "part")
    with pytest.raises(Stop):
        run_grid(cfg, plugins=toy_registry, progress=False, after_unit=stop_after)
    store = ResultStore(cfg.output)
    assert 0 < len(store.finished()) < 36
    store.close()
    resumed = run_grid(cfg, plugins=toy_registry, progress=False)
    assert resumed.skipped > 0 and resumed.computed == 36 - resumed.skipped
    a = frame(full.run_dir).drop(columns=["image_path"])
    b = frame(resumed.run_dir).drop(columns=["image_path"])
    pd.testing.assert_frame_equal(a, b)


def test_resume_of_a_finished_run_does_no_model_work(tmp_path, image_dir, toy_registry, monkeypatch):
    cfg = config(tmp_path, image_dir, toy_registry)
    run_grid(cfg, plugins=toy_registry, progress=False)
    calls = []
    monkeypatch.setattr(toy_plugins.ToyMetric, "score", lambda self, x: calls.append(1))
    again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert calls == [] and again.computed == 0 and again.skipped == 36


def test_corrupted_cache_entry_is_recomputed(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    first = frame(run_grid(cfg, plugins=toy_registry, progress=False).run_dir)
    png = sorted((cfg.output / "cache" / "adv").rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:100])  # truncated file
    store = ResultStore(cfg.output)
    store.db.execute("DELETE FROM cells")  # forget results, keep the artifact records
    store.close()
    second = frame(run_grid(cfg, plugins=toy_registry, progress=False).run_dir)
    pd.testing.assert_frame_equal(first, second)
    assert len(png.read_bytes()) > 100


def test_faulty_plugins_fail_their_cells_only(tmp_path, image_dir, toy_registry):
    text = GRID.replace(
        "defences: [no-defence, toy-blur, toy-noise-defence]", "defences: [no-defence, toy-explode, toy-wrong-shape]"
    ).replace("metrics: [toy-metric]", "metrics: [toy-metric, toy-nan]")
    summary = run_grid(config(tmp_path, image_dir, toy_registry, text=text), plugins=toy_registry, progress=False)
    df = frame(summary.run_dir)
    assert len(df) == 6 * 2 * 2 * 3
    ok = df[(df["metric"] == "toy-metric") & (df["defence"] == "no-defence")]
    assert (ok["status"] == "ok").all()
    explode = df[df["defence"] == "toy-explode"]
    assert (explode["status"] == "failed").all()
    assert explode["error"].str.contains("defence 'toy-explode' raised RuntimeError: boom").all()
    wrong = df[(df["defence"] == "toy-wrong-shape") & (df["metric"] == "toy-metric")]
    assert wrong["error"].str.contains("returned shape").all()
    nan = df[(df["metric"] == "toy-nan") & (df["defence"] == "no-defence")]
    assert (nan["status"] == "failed").all() and nan["error"].str.contains("NaN").all()
    assert (
        summary.failed == int((df["status"] == "failed").sum()) == 6 * 2 * 2 + 6 * 2 * 2 * 1 - 0 or summary.failed > 0
    )


def test_second_process_on_the_same_run_dir_is_refused(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    cfg.output.mkdir(parents=True)
    with RunLock(cfg.output):
        with pytest.raises(RunLockedError, match="another iqadef process is running"):
            run_grid(cfg, plugins=toy_registry, progress=False)


def test_limit_and_fresh(tmp_path, image_dir, toy_registry):
    cfg = config(tmp_path, image_dir, toy_registry)
    assert run_grid(cfg, plugins=toy_registry, progress=False, limit=2).total == 2 * 2 * 3
    fresh = run_grid(cfg, plugins=toy_registry, progress=False, fresh=True)
    assert fresh.computed == 36 and fresh.skipped == 0
