"""Certified defences in the grid: their rows, columns, export, resume, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from iqadef.config.registry import load_run_config
from iqadef.core.errors import ConfigError
from iqadef.execute import run_grid
from iqadef.store.results import ResultStore

GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
metrics: [toy-metric]
attacks: [{attack}]
defences: [no-defence]
certified:
  - {{name: median-smoothing, n: 24, sigma: 0.05, eps: 0.05, batch: 16}}
  - {{name: mean-smoothing, n: 16, sigma: 0.05, eps: 0.05, low: 0, high: 4}}
"""
CERT = [
    "cert_lower_clean",
    "cert_upper_clean",
    "cert_lower_adv",
    "cert_upper_adv",
    "cert_radius",
    "cert_width_clean",
    "adv_l2",
    "cert_applies",
    "cert_fs_adv_inside",
    "cert_f_adv_inside",
]


def config(tmp_path: Path, images: Path, registry, output: str, attack: str = "toy-sign"):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(images=images, output=output, attack=attack))
    return load_run_config(path, plugins=registry)


def frame(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet").drop(columns=["image_path"])


def test_certified_rows_are_stored_and_exported(tmp_path, image_dir, toy_registry):
    summary = run_grid(config(tmp_path, image_dir, toy_registry, "run"), plugins=toy_registry, progress=False)
    df = frame(summary.run_dir)
    assert summary.failed == 0 and len(df) == 6 * 3
    assert set(df["defence"]) == {
        "no-defence",
        "median-smoothing[sigma=0.05,n=24,eps=0.05,batch=16]",
        "mean-smoothing[sigma=0.05,n=16,eps=0.05,low=0,high=4]",
    }
    cert = df[df["defence"] != "no-defence"]
    assert cert[CERT].notna().all().all()
    assert (cert["cert_lower_clean"] <= cert["f_def_clean"]).all()
    assert (cert["f_def_clean"] <= cert["cert_upper_clean"]).all()
    assert (cert["cert_radius"] == 0.05).all()
    # f_s differs from f (noise changes the toy sharpness metric), f(x) is the plain metric's
    plain = df[df["defence"] == "no-defence"].set_index("image")
    for _, group in cert.groupby("defence"):
        g = group.set_index("image")
        pd.testing.assert_series_equal(g["f_clean"], plain["f_clean"])
        assert (g["f_def_clean"] != g["f_clean"]).all()
        assert g["gain_clean"].notna().all()  # |f(x) - f_s(x)| / f(x): what smoothing costs
    csv = pd.read_csv(summary.run_dir / "results.csv")
    assert set(CERT) <= set(csv.columns)
    # the purifier's rows have no certificate
    assert df[df["defence"] == "no-defence"]["cert_lower_clean"].isna().all()


def test_resumed_run_equals_a_fresh_one(tmp_path, image_dir, toy_registry):
    full = run_grid(config(tmp_path, image_dir, toy_registry, "full"), plugins=toy_registry, progress=False)

    class Stop(Exception):
        pass

    def stop_after(n):
        if n == 2:
            raise Stop

    cfg = config(tmp_path, image_dir, toy_registry, "part")
    with pytest.raises(Stop):
        run_grid(cfg, plugins=toy_registry, progress=False, after_unit=stop_after)
    store = ResultStore(cfg.output)
    assert 0 < len(store.finished()) < 18
    store.close()
    resumed = run_grid(cfg, plugins=toy_registry, progress=False)
    assert resumed.skipped > 0 and resumed.computed == 18 - resumed.skipped
    pd.testing.assert_frame_equal(frame(full.run_dir), frame(resumed.run_dir))
    again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert again.computed == 0


def test_an_adaptive_attack_targets_the_smoothed_metric(tmp_path, image_dir, toy_registry):
    attack = "{name: toy-sign, adaptive: eot, eot_samples: 2}"
    summary = run_grid(config(tmp_path, image_dir, toy_registry, "eot", attack), plugins=toy_registry, progress=False)
    df = frame(summary.run_dir)
    assert summary.failed == 0
    paths = df.groupby("defence")["adv_path"].apply(set)
    assert len({frozenset(p) for p in paths}) == 3  # one x_a per defence: each attacked through its own
    cert = df[df["defence"].str.startswith("median")]
    assert (cert["adv_l2"] > 0).all()


def test_a_certified_label_may_not_repeat_and_unknown_names_are_named(tmp_path, image_dir, toy_registry):
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\ncertified: [median-smoothin]\n"
    )
    with pytest.raises(ConfigError, match=r"certified\[0\].*median-smoothing"):
        load_run_config(path, plugins=toy_registry)
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
        f"certified: [median-smoothing, median-smoothing]\n"
    )
    with pytest.raises(ConfigError, match="listed twice"):
        load_run_config(path, plugins=toy_registry)
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\nattacks: [toy-sign]\n"
        f"certified: [{{name: median-smoothing, alpha: 0.9}}]\n"
    )
    with pytest.raises(ConfigError, match="alpha"):
        load_run_config(path, plugins=toy_registry)


def test_summary_scores_of_certified_defences(tmp_path, image_dir, toy_registry):
    from iqadef.analysis.scores import aggregate
    from iqadef.plugins.scores.certified import CertifiedSummary

    summary = run_grid(config(tmp_path, image_dir, toy_registry, "sum"), plugins=toy_registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    table = aggregate(df, {"metrics": {"toy-metric": {"range": [0, 1]}}}, summaries=[CertifiedSummary()])
    by = table.set_index("defence")
    assert math.isnan(by.loc["no-defence"].get("cert_width_median", math.nan))
    median = by.loc[[d for d in by.index if d.startswith("median")][0]]
    rows = df[df["defence"].str.startswith("median")]
    assert median["cert_width_median"] == pytest.approx(rows["cert_width_clean"].median())
    assert median["smoothing_cost"] == pytest.approx((rows["f_def_clean"] - rows["f_clean"]).abs().mean())
    assert median["cert_applies_share"] == pytest.approx((rows["adv_l2"] <= 0.05).mean())
    inside = ((rows["f_adv"] >= rows["cert_lower_clean"]) & (rows["f_adv"] <= rows["cert_upper_clean"])).mean()
    assert median["cert_f_adv_inside_share"] == pytest.approx(inside)
    assert "cert_width_clean_mean" in table.columns  # per-image columns are averaged like any other


def test_verify_recomputes_certified_cells(tmp_path, image_dir, toy_registry):
    from iqadef.execute.verify import verify_run

    summary = run_grid(config(tmp_path, image_dir, toy_registry, "ver"), plugins=toy_registry, progress=False)
    verdict = verify_run(summary.run_dir, cells=18, seed=0, plugins=toy_registry)
    assert verdict.checked == 18 and verdict.matched == 18, verdict.mismatches


def test_plan_counts_the_noisy_copies_of_every_certified_defence(tmp_path, image_dir, toy_registry):
    from iqadef.plan.grid import plan_units, plugin_calls

    cfg = config(tmp_path, image_dir, toy_registry, "run")
    dataset = cfg.open_dataset()
    units = plan_units(cfg, dataset, set())
    calls = plugin_calls(cfg, dataset, units)
    # 6 images in 3 batches of 2; toy-sign: 2 steps per image; certified n = 24 + 16 per image, for x once and
    # for each x_a; no-defence: f(D(x)) and f(D(x_a))
    assert calls["smoothing_samples"] == 6 * 40 * 2
    assert calls["metric_scores"] == 6 * (1 + 1 + 40) + 6 * (1 + 1 + 40)
    assert calls["defence_calls"] == 6 * 2 and calls["attack_runs"] == 6 and calls["attack_steps"] == 12


RADIUS_GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
metrics: [toy-metric]
attacks: [toy-sign]
defences: [no-defence]
certified:
  - {{name: rs, n: 60, n0: 10, sigma: 0.02, eps: 0.01, bins: 2, batch: 64}}
"""


def test_radius_certificates_in_the_grid_summary_and_report(tmp_path, image_dir, toy_registry):
    """rs rows carry bins, radii and abstentions; the summary and the report's certified-accuracy curve read
    them; a resumed run equals a fresh one; plan counts n0 + n noisy copies."""
    from iqadef.analysis.scores import aggregate
    from iqadef.plan.grid import plan_units, plugin_calls
    from iqadef.plugins.scores.certified import CertifiedSummary
    from iqadef.report.certified import certified_curve

    path = tmp_path / "rs.yaml"
    path.write_text(RADIUS_GRID.format(images=image_dir, output=tmp_path / "rs"))
    cfg = load_run_config(path, plugins=toy_registry)
    summary = run_grid(cfg, plugins=toy_registry, progress=False)
    df = frame(summary.run_dir)
    assert summary.failed == 0
    rs = df[df["defence"].str.startswith("rs")]
    assert len(rs) == 6
    assert set(rs["cert_bin_clean"].dropna()) <= {-1.0, 0.0, 1.0, 2.0, 3.0}
    assert ((rs["cert_radius_clean"] >= 0) & ((rs["cert_bin_clean"] >= 0) | (rs["cert_radius_clean"] == 0))).all()
    assert (rs["cert_abstain_clean"] == (rs["cert_bin_clean"] < 0)).all()
    covered = (rs["cert_bin_clean"] >= 0) & (rs["adv_l2"] < rs["cert_radius_clean"])
    assert rs.loc[covered, "cert_bin_kept"].notna().all() and rs.loc[~covered, "cert_bin_kept"].isna().all()
    # f_s is the bin's midpoint; the interval is the bin's edges where the radius covers eps
    inside = rs["cert_radius_clean"] >= 0.01
    assert (rs.loc[inside, "cert_lower_clean"] <= rs.loc[inside, "f_def_clean"]).all()
    table = aggregate(
        pd.read_parquet(summary.run_dir / "results.parquet"),
        {"metrics": {"toy-metric": {"range": [0, 1]}}},
        summaries=[CertifiedSummary()],
    )
    row = table.set_index("defence").loc[rs["defence"].iloc[0]]
    assert row["cert_radius_median"] == pytest.approx(rs["cert_radius_clean"].median())
    want = (
        (rs["cert_bin_clean"] >= 0)
        & (rs["cert_bin_clean"] == rs["cert_bin_f_clean"])
        & (rs["cert_radius_clean"] >= 0.01)
    ).mean()
    assert row["cert_accuracy"] == pytest.approx(want)
    curve = certified_curve(df, "toy-metric", rs["defence"].iloc[0], [0.0, 1e9])
    assert curve["certified_share"].tolist() == [float((rs["cert_bin_clean"] >= 0).mean()), 0.0]
    assert (curve["certified_accuracy"] <= curve["certified_share"]).all()
    from iqadef.report import write_report

    written = write_report(summary.run_dir, plugins=toy_registry)
    assert any(k.startswith("figure:certified_radius_toy-metric") for k in written)
    assert "Certified accuracy against radius" in written["html"].read_text()
    units = plan_units(cfg, cfg.open_dataset(), set())
    calls = plugin_calls(cfg, cfg.open_dataset(), units)
    assert calls["smoothing_samples"] == 6 * 70 * 2
    again = run_grid(cfg, plugins=toy_registry, progress=False)
    assert again.computed == 0
    pd.testing.assert_frame_equal(df, frame(again.run_dir))
