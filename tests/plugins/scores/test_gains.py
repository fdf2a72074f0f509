"""Gain, MSU gains and quality scores on given metric values."""

import math

import pytest
import torch

from iqadef.plugins.scores.gain import GainScore
from iqadef.plugins.scores.msu_gain import MsuGain
from iqadef.plugins.scores.quality import QualityScore

from .conftest import make_cells


def images(value, size=16, batch=2):
    return torch.full((batch, 3, size, size), float(value))


def test_paper_gain_of_given_scores(metric):
    x = images(0.5)
    cells = make_cells(
        x, x, x, x, f_clean=[50, 40], f_adv=[90, 90], f_def_clean=[55, 40], f_def_adv=[60, 30], metric=metric
    )
    out = GainScore().compute(cells)
    assert out["gain"].tolist() == pytest.approx([0.2, 0.25])  # |50-60|/50, |40-30|/40
    assert out["gain_clean"].tolist() == pytest.approx([0.1, 0.0])  # |50-55|/50, 0


def test_gain_is_nan_not_infinite_when_the_clean_score_is_zero(metric):
    x = images(0.5, batch=1)
    out = GainScore().compute(make_cells(x, x, x, x, [0.0], [1.0], [0.0], [1.0], metric))
    assert math.isnan(out["gain"].item())


def test_msu_relative_and_absolute_gains(metric):
    x = images(0.5, batch=1)
    cells = make_cells(x, x, x, x, f_clean=[50], f_adv=[80], f_def_clean=[52], f_def_adv=[60], metric=metric)
    out = MsuGain().compute(cells)  # metric range 0..100
    assert sorted(out) == sorted(
        ["rel_gain_x_dxa", "abs_gain_x_dxa", "rel_gain_x_xa", "abs_gain_x_xa", "rel_gain_dx_dxa", "abs_gain_dx_dxa"]
    )
    assert out["rel_gain_x_dxa"].item() == pytest.approx(10 / (50 + 1e-6))
    assert out["abs_gain_x_dxa"].item() == pytest.approx(0.10)
    assert out["rel_gain_x_xa"].item() == pytest.approx(0.6, rel=1e-6)
    assert out["abs_gain_x_xa"].item() == pytest.approx(0.30)
    assert out["rel_gain_dx_dxa"].item() == pytest.approx(8 / 52, rel=1e-6)
    assert out["abs_gain_dx_dxa"].item() == pytest.approx(0.08)


def test_quality_and_similarity_scores(metric):
    x, dxa = images(0.2), images(0.3)
    cells = make_cells(x, dxa, x, dxa, [1, 1], [1, 1], [1, 1], [1, 1], metric)
    out = QualityScore().compute(cells)
    ssim = 0.1201 / 0.1301  # constant images 0.2 vs 0.3
    psnr = 20.0  # MSE 0.01
    assert out["quality_score"].tolist() == pytest.approx(
        [0.5 * (ssim + psnr / 80)] * 2, abs=2e-5
    )  # 0.5866 (float32 SSIM)
    assert out["similarity_score"].tolist() == pytest.approx([ssim + psnr / 40] * 2, abs=2e-5)  # 1.4231
    assert out["similarity_score_clean"].tolist() == [math.inf] * 2  # identical: PSNR inf, as scikit-image


def test_quality_resizes_a_cropped_defence_output(metric):
    x = images(0.4, size=32)
    dxa = images(0.4, size=12)
    out = QualityScore().compute(make_cells(x, x, dxa, dxa, [1, 1], [1, 1], [1, 1], [1, 1], metric))
    # x_a == x: the study's code counts PSNR as 150 dB (the resized constant crop equals x: SSIM 1)
    assert out["quality_score"].tolist() == pytest.approx([0.5 * (1 + 150 / 80)] * 2)
