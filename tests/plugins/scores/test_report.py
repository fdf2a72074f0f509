"""A synthetic run directory (failed cell, size-changing defence, MOS) through write_report."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iqadef.plugins.scores.full_reference import FullReferenceMeasures
from iqadef.plugins.scores.gain import GainScore
from iqadef.plugins.scores.msu_gain import MsuGain
from iqadef.plugins.scores.quality import QualityScore
from iqadef.report import figure_file_name, load_results, summary_table, write_report

from .conftest import make_cells

IMAGES = [f"img{i}" for i in range(5)]
ATTACKS = ["ifgsm", "fgsm"]
DEFENCES = {"no-defence": None, "jpeg[quality=10]": 0.02, "random-crop[size=16]": 0.01}


def save_png(tensor, path):
    array = (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def build_run(run_dir, with_mos=True):
    """Results as the runner writes them, ImageScore columns computed by the real score plugins."""
    g = torch.Generator().manual_seed(0)
    (run_dir / "adv").mkdir(parents=True)
    (run_dir / "examples").mkdir()
    (run_dir / "clean").mkdir()
    score_plugins = [FullReferenceMeasures(), GainScore(), MsuGain(), QualityScore()]
    rows = []
    for i, image in enumerate(IMAGES):
        x = torch.rand(1, 3, 24, 24, generator=g)
        clean_path = run_dir / "clean" / f"{image}.png"
        save_png(x[0], clean_path)
        f_x = 40.0 + 5 * i
        for a, attack in enumerate(ATTACKS):
            xa = (x + (a + 1) * 0.02 * torch.randn(1, 3, 24, 24, generator=g)).clamp(0, 1)
            adv_rel = f"adv/{attack}_{image}.png"
            save_png(xa[0], run_dir / adv_rel)
            f_xa = f_x + 20 + 5 * a
            for d, (defence, noise) in enumerate(DEFENCES.items()):
                row = {
                    "image": image,
                    "metric": "toy",
                    "attack": attack,
                    "defence": defence,
                    "metric_key": "k1",
                    "attack_key": f"a{a}",
                    "defence_key": f"d{d}",
                    "metric_params": "{}",
                    "attack_params": "{}",
                    "defence_params": "{}",
                    "mos": float(i + 1) if with_mos else float("nan"),
                    "adv_path": adv_rel,
                    "image_path": str(clean_path),
                    "example_path": "",
                }
                if attack == "fgsm" and defence.startswith("jpeg") and image == "img3":
                    row.update(
                        status="failed",
                        error="RuntimeError: out of memory",
                        f_clean=np.nan,
                        f_adv=np.nan,
                        f_def_clean=np.nan,
                        f_def_adv=np.nan,
                    )
                    rows.append(row)
                    continue
                if noise is None:
                    dx, dxa = x, xa
                elif defence.startswith("random-crop"):
                    dx, dxa = x[..., 4:20, 4:20], xa[..., 4:20, 4:20]  # changes the size
                else:
                    dx = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
                    dxa = (xa + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
                f_dx = f_x + (d * 1.5 if noise else 0.0)
                f_dxa = f_xa if noise is None else f_x + 10 - 3 * d + i % 3
                cells = make_cells(x, xa, dx, dxa, [f_x], [f_xa], [f_dx], [f_dxa])
                for plugin in score_plugins:
                    row.update({k: float(v[0]) for k, v in plugin.compute(cells).items()})
                if i < 2:
                    example_rel = f"examples/{attack}_{defence}_{image}.png"
                    save_png(dxa[0], run_dir / example_rel)
                    row["example_path"] = example_rel
                row.update(status="ok", error="", f_clean=f_x, f_adv=f_xa, f_def_clean=f_dx, f_def_adv=f_dxa)
                rows.append(row)
    df = pd.DataFrame(rows)
    df.to_parquet(run_dir / "results.parquet")
    run_info = {
        "metrics": {"toy": {"name": "toy", "range": [0, 100], "higher_is_better": True}},
        "seed": 7,
        "dataset": {"images": "/data/imgs", "mos": "/data/mos.csv" if with_mos else None},
        "registry": {},
    }
    (run_dir / "run.json").write_text(json.dumps(run_info))
    return df, run_info


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    df, run_info = build_run(run_dir)
    return run_dir, df, run_info, write_report(run_dir)


def test_summary_table_counts_failures_and_averages_gain(report):
    _, df, run_info, _ = report
    short = summary_table(df, run_info)
    assert len(short) == len(ATTACKS) * len(DEFENCES)
    row = short[(short["attack"] == "fgsm") & (short["defence"] == "jpeg[quality=10]")].iloc[0]
    assert row["n_images"] == 4 and row["n_failed"] == 1
    ok = df[(df["attack"] == "fgsm") & (df["defence"] == "jpeg[quality=10]") & (df["status"] == "ok")]
    expected = (abs(ok["f_clean"] - ok["f_def_adv"]) / ok["f_clean"]).mean()
    assert row["gain"] == pytest.approx(expected)
    assert row["gain_ci_low"] <= row["gain"] <= row["gain_ci_high"]
    no_def = short[(short["attack"] == "ifgsm") & (short["defence"] == "no-defence")].iloc[0]
    assert no_def["gain"] == pytest.approx(
        ((df.query("attack == 'ifgsm' and defence == 'no-defence'").eval("(f_adv - f_clean) / f_clean")).mean())
    )


def test_write_report_writes_html_markdown_and_figures(report):
    run_dir, _, _, written = report
    figures = [figure_file_name(kind, "toy") for kind in ("gain_heatmap", "srocc_heatmap", "gain_bins", "tradeoff")]
    for key in ("html", "markdown", "summary_csv", "figure:examples", *(f"figure:{Path(f).stem}" for f in figures)):
        assert written[key].exists(), key
    for path in (run_dir / "figures").glob("*.png"):
        with Image.open(path) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert {p.name for p in (run_dir / "figures").glob("*.png")} == {*figures, "examples.png"}


def test_html_is_self_contained_with_tables_and_images(report):
    run_dir, _, _, written = report
    text = written["html"].read_text()
    assert "Ranking: all metrics pooled" not in text  # one metric: nothing to pool
    for heading in (
        "Summary: gain",
        "Ranking: toy",
        "Key findings",
        "Key scores",
        "All aggregated scores",
        "Figure 3",
        "Figure 4",
        "Figure 5",
        "Image comparison",
        "Failed cells (1)",
    ):
        assert heading in text, heading
    assert text.count("<table") >= 6
    for defence in DEFENCES:
        assert defence in text
    assert "RuntimeError: out of memory" in text
    for column in ("robustness_score", "srocc_mos_def_adv", "psnr_x_dxa", "quality_score"):
        assert f"<th>{column}</th>" in text, column
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(uris) == 4  # gain against quality, Figures 3, 4 and 5 (the example strip is in report.md; the page
    # has the picker)
    assert base64.b64decode(uris[0])[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(text.split("<script type='application/json' id='comparison-data'>")[1].split("</script>")[0])
    assert len(data["cells"]) == 2 * len(ATTACKS) * len(DEFENCES) - 0  # img0 and img1 keep examples
    assert all(uri.startswith(("data:image/webp;base64,", "data:image/jpeg;base64,")) for uri in data["thumbs"])
    assert len(set(data["thumbs"])) == len(data["thumbs"])  # each image once
    no_defence = [c for c in data["cells"] if c["d"] == "no-defence"]
    assert no_defence and all(c["dxa"] == c["xa"] for c in no_defence)  # D(x_a) = x_a: the same thumbnail
    assert len({c["dxa"] for c in data["cells"]}) == len(data["cells"]) - len(no_defence) + len(no_defence)
    for pattern in ("src='figures/", 'src="figures/', "file://", "http://", "https://"):
        assert pattern not in text, pattern  # nothing linked from outside


def test_summary_csv_has_every_aggregated_score(report):
    run_dir, _, _, _ = report
    agg = pd.read_csv(run_dir / "summary.csv")
    assert len(agg) == len(ATTACKS) * len(DEFENCES)
    for col in (
        "gain_mean",
        "gain_ci_low",
        "gain_ci_high",
        "quality_score_mean",
        "ssim_x_dxa_mean",
        "psnr_dx_dxa_mean",
        "rel_gain_x_xa_mean",
        "robustness_score",
        "wasserstein_score",
        "energy_distance_score",
        "srocc_mos_def_adv",
        "srocc_clean_def_clean",
        "n_failed",
    ):
        assert col in agg.columns, col
    crop = agg[agg["defence"] == "random-crop[size=16]"]
    assert np.isfinite(crop["psnr_x_dxa_mean"]).all() and (crop["psnr_x_dxa_mean"] <= 100).all()
    # no-defence: x and D(x) are identical, PSNR +inf per image (as scikit-image): left out and counted
    no_defence = agg[agg["defence"] == "no-defence"]
    assert no_defence["psnr_x_dx_mean"].isna().all()
    assert (no_defence["psnr_x_dx_n_inf"] == no_defence["n_images"]).all()
    assert (agg.loc[agg["defence"] != "no-defence", "psnr_x_dx_n_inf"] == 0).all()
    no_def = agg[agg["defence"] == "no-defence"]
    assert (no_def["gain_clean_mean"] == 0).all()


def test_ranking_puts_the_lowest_normalised_gain_first(report):
    run_dir, df, _, written = report
    md = written["markdown"].read_text()
    section = md.split("## Defence ranking per metric")[1].split("### toy")[1].split("###")[0]
    ranked = [line.split("|")[2].strip() for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    ok = df[df["status"] == "ok"].assign(norm=lambda t: (t["f_clean"] - t["f_def_adv"]).abs() / 100)
    per_image = ok.groupby(["defence", "image"])["norm"].mean()  # each image once per defence
    expected = list(per_image.groupby(level="defence").mean().sort_values().index)
    assert ranked == expected
    assert f"![toy](figures/{figure_file_name('gain_heatmap', 'toy')})" in md


@pytest.mark.slow
def test_report_without_mos_says_so(tmp_path):
    build_run(tmp_path, with_mos=False)
    (tmp_path / "results.parquet").rename(tmp_path / "results.parquet.bak")
    df = pd.read_parquet(tmp_path / "results.parquet.bak")
    df.to_csv(tmp_path / "results.csv", index=False)  # the csv fallback
    written = write_report(tmp_path)
    text = written["html"].read_text()
    assert "no MOS file was given" in text  # Figure 4 falls back to the clean scores as the reference
    assert f"figure:{Path(figure_file_name('srocc_heatmap', 'toy')).stem}" in written
    loaded, _ = load_results(tmp_path)
    assert loaded["image"].iloc[0] == "img0" and loaded["example_path"].iloc[-1] == ""


@pytest.mark.slow
def test_report_of_a_minimal_table_with_an_all_failed_group(tmp_path):
    """Only the runner's own columns (no score plugins), no examples, one group entirely failed."""
    rows = []
    for i in range(4):
        for defence in ("no-defence", "median-blur"):
            failed = defence == "median-blur"
            rows.append(
                {
                    "image": f"i{i}",
                    "metric": "lin",
                    "attack": "fgsm",
                    "defence": defence,
                    "status": "failed" if failed else "ok",
                    "error": "boom" if failed else "",
                    "f_clean": np.nan if failed else 50.0 + i,
                    "f_adv": np.nan if failed else 60.0 + i,
                    "f_def_clean": np.nan if failed else 50.0 + i,
                    "f_def_adv": np.nan if failed else 60.0 + i,
                    "mos": np.nan,
                    "adv_path": "",
                    "example_path": "",
                    "image_path": "",
                }
            )
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    written = write_report(tmp_path)  # no run.json: defaults
    text = written["html"].read_text()
    assert "Failed cells (4)" in text and "No example images were saved." in text
    ranking = text.split("id='ranking-lin'")[1].split("<h2>")[0]  # one metric: its ranking, none pooled
    assert "no-defence" in ranking and "0.1943" in ranking  # mean of 10/50 .. 10/53
    agg = pd.read_csv(tmp_path / "summary.csv")
    blur = agg[agg["defence"] == "median-blur"].iloc[0]
    assert blur["n_images"] == 0 and blur["n_failed"] == 4 and np.isnan(blur["f_clean_mean"])
    # gain of no-defence: (60+i - (50+i)) / (50+i)
    expected = np.mean([10 / (50 + i) for i in range(4)])
    assert summary_table(pd.read_csv(tmp_path / "results.csv"), {})["gain"].iloc[0] == pytest.approx(expected)


def test_figure4_matrix_with_mos_or_with_the_clean_scores_on_hand_made_numbers():
    from iqadef.report import CLEAN_ROW, srocc_matrix

    rows = []
    for d, adv, dclean in (("keeps", [10, 20, 30, 40], [1, 2, 3, 4]), ("flips", [4, 3, 2, 1], [1, 3, 2, 4])):
        for i in range(4):
            rows.append(
                {
                    "metric": "m",
                    "attack": "a",
                    "defence": d,
                    "image": f"i{i}",
                    "status": "ok",
                    "f_clean": float(i + 1),
                    "f_def_adv": float(adv[i]),
                    "f_def_clean": float(dclean[i]),
                    "mos": float(4 - i),
                }
            )
    df = pd.DataFrame(rows)
    clean = srocc_matrix(df, "m", "f_clean")
    assert clean.loc["a", "keeps"] == pytest.approx(1.0) and clean.loc["a", "flips"] == pytest.approx(-1.0)
    assert clean.loc[CLEAN_ROW, "keeps"] == pytest.approx(1.0)
    assert clean.loc[CLEAN_ROW, "flips"] == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert list(clean.columns) == ["keeps", "flips"]  # best first
    mos = srocc_matrix(df, "m")  # the MOS here is the reverse of f(x)
    assert mos.loc["a", "keeps"] == pytest.approx(-1.0) and mos.loc[CLEAN_ROW, "flips"] == pytest.approx(-0.8)
    assert srocc_matrix(df.drop(columns="mos"), "m").empty
