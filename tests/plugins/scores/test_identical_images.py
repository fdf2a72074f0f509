"""Identical images: +inf PSNR as the reference computes it, kept through storage, and handled by aggregates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from iqadef.analysis.scores import aggregate
from iqadef.plugins.scores.full_reference import FullReferenceMeasures
from iqadef.plugins.scores.quality import QualityScore

from .conftest import make_cells

skimage_metrics = pytest.importorskip("skimage.metrics")


def _skimage_psnr_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    x, y = (t[0].permute(1, 2, 0).double().numpy() for t in (a, b))
    with np.errstate(divide="ignore"):
        psnr = skimage_metrics.peak_signal_noise_ratio(x, y, data_range=1)
    return psnr, skimage_metrics.structural_similarity(x, y, channel_axis=2, data_range=1)


def _images():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 16, 16, generator=g)
    xa = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    dxa = (xa + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, xa, dxa


def test_quality_scores_as_the_two_reference_codes_compute_them():
    """adversarial_purification test.py: PSNR := 150 when x_a == x; MSU similarity: SSIM + PSNR/40 (inf stays)."""
    x, xa, dxa = _images()
    # attacked: both scores from PSNR(x, D(x_a))
    out = QualityScore().compute(make_cells(x, xa, x, dxa, [1.0], [2.0], [1.0], [1.5]))
    psnr, ssim = _skimage_psnr_ssim(x, dxa)
    assert float(out["quality_score"][0]) == pytest.approx(0.5 * (ssim + psnr / 80), abs=1e-5)
    assert float(out["similarity_score"][0]) == pytest.approx(ssim + psnr / 40, abs=1e-5)
    assert math.isinf(float(out["similarity_score_clean"][0]))  # D(x) = x: PSNR inf, as skimage
    # not attacked (x_a == x) but purified: the study's quality score counts PSNR as 150 dB
    out = QualityScore().compute(make_cells(x, x, dxa, dxa, [1.0], [1.0], [1.5], [1.5]))
    _, ssim = _skimage_psnr_ssim(x, dxa)
    assert float(out["quality_score"][0]) == pytest.approx(0.5 * (ssim + 150 / 80), abs=1e-5)
    assert math.isfinite(float(out["similarity_score"][0]))


def test_infinite_values_are_left_out_of_means_and_counted():
    rows = []
    for defence, psnrs in (
        ("no-defence", [math.inf, math.inf, math.inf]),
        ("jpeg", [30.0, math.inf, 34.0]),
        ("blur", [20.0, 22.0, 24.0]),
    ):
        for image, value in zip("abc", psnrs):
            rows.append(
                {
                    "image": image,
                    "metric": "m",
                    "attack": "ifgsm",
                    "defence": defence,
                    "status": "ok",
                    "f_clean": 1.0,
                    "f_adv": 2.0,
                    "f_def_clean": 1.0,
                    "f_def_adv": 1.5,
                    "psnr_x_dx": value,
                    "gain": 0.5,
                }
            )
    agg = aggregate(pd.DataFrame(rows), {}, summaries=[]).set_index("defence")
    assert agg.loc["jpeg", "psnr_x_dx_mean"] == pytest.approx(32.0)
    assert agg.loc["jpeg", "psnr_x_dx_n_inf"] == 1
    assert math.isnan(agg.loc["no-defence", "psnr_x_dx_mean"]) and agg.loc["no-defence", "psnr_x_dx_n_inf"] == 3
    assert agg.loc["blur", "psnr_x_dx_n_inf"] == 0 and agg.loc["blur", "psnr_x_dx_mean"] == pytest.approx(22.0)
    assert "gain_n_inf" not in agg.columns  # only columns that have an infinite value get a count


def test_infinite_psnr_survives_the_store_and_the_exported_tables(tmp_path):
    """Scores go through SQLite (JSON), Parquet and CSV; +inf must come back as +inf, not NaN or a string."""
    from iqadef.store.results import ResultStore, export_tables

    x, xa, dxa = _images()
    scores = FullReferenceMeasures().compute(make_cells(x, xa, x, dxa, [1.0], [2.0], [1.0], [1.5]))
    assert math.isinf(float(scores["psnr_x_dx"][0]))
    row = {
        "metric_key": "k",
        "attack_key": "a",
        "defence_key": "d",
        "image": "img",
        "metric": "m",
        "attack": "ifgsm",
        "defence": "no-defence",
        "status": "ok",
        "error": "",
        "f_clean": 1.0,
        "f_adv": 2.0,
        "f_def_clean": 1.0,
        "f_def_adv": 1.5,
        "unit": "u",
        "scores": {k: float(v[0]) for k, v in scores.items()},
    }
    store = ResultStore(tmp_path)
    try:
        store.write_cells([row])
        table = store.dataframe()
    finally:
        store.close()
    assert math.isinf(table.loc[0, "psnr_x_dx"]) and table.loc[0, "psnr_x_dx"] > 0
    assert table.loc[0, "status"] == "ok"  # the checksum holds with inf in it
    paths = export_tables(table, tmp_path)
    for read in (pd.read_parquet(paths["results.parquet"]), pd.read_csv(paths["results.csv"])):
        assert read["psnr_x_dx"].dtype.kind == "f"
        assert math.isinf(read.loc[0, "psnr_x_dx"]) and read.loc[0, "psnr_x_dx"] > 0
        assert read.loc[0, "psnr_x_dxa"] == pytest.approx(table.loc[0, "psnr_x_dxa"])
