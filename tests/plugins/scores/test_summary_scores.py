"""SROCC and the MSU robustness-benchmark scores on hand-made numbers."""

import math

import numpy as np
import pandas as pd
import pytest

from iqadef.plugins.scores import robustness_benchmark as rb
from iqadef.plugins.scores.srocc import Srocc, spearman

INFO = {"label": "m", "name": "m", "range": (0.0, 100.0), "higher_is_better": True}


def test_spearman_of_known_rankings():
    assert spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])[0] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])[0] == pytest.approx(-1.0)
    # one swapped pair: 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5])[0] == pytest.approx(0.9)
    assert math.isnan(spearman([1, 2], [1, 2])[0])


def test_srocc_summary_with_and_without_mos():
    group = pd.DataFrame(
        {
            "mos": [1, 2, 3, 4, 5],
            "f_clean": [10, 20, 30, 40, 50],
            "f_adv": [5, 4, 3, 2, 1],
            "f_def_clean": [1, 3, 2, 4, 5],
            "f_def_adv": [1, 3, 2, 4, 5],
        }
    )
    out = Srocc().summarise(group, INFO)
    assert out["srocc_mos_clean"] == pytest.approx(1.0)
    assert out["srocc_mos_adv"] == pytest.approx(-1.0)
    assert out["srocc_mos_def_adv"] == pytest.approx(0.9)
    assert out["srocc_clean_def_clean"] == pytest.approx(0.9)
    # Fisher z: tanh(atanh(0.9) -+ 1.96 * sqrt(1.06 / 2))
    assert out["srocc_mos_def_adv_ci_low"] == pytest.approx(0.0453, abs=1e-3)
    assert out["srocc_mos_def_adv_ci_high"] == pytest.approx(0.9940, abs=1e-3)
    no_mos = Srocc().summarise(group.assign(mos=np.nan), INFO)
    assert math.isnan(no_mos["srocc_mos_clean"])
    assert no_mos["srocc_clean_def_clean"] == pytest.approx(0.9)


# source 10, 15, 20 scale to s = 0, .5, 1; proc 15, 15, 20 to s' = .5, .5, 1
SOURCE = np.array([10.0, 15.0, 20.0])
PROC = np.array([15.0, 15.0, 20.0])


def test_robustness_score_of_given_numbers():
    per_image = rb.robustness_score(SOURCE, PROC)
    # log10(max(1-s, s) / (|s-s'| + 1e-6)): log10(1/0.500001), log10(0.5/1e-6), log10(1/1e-6)
    assert per_image.tolist() == pytest.approx([math.log10(1 / 0.500001), math.log10(5e5), 6.0])
    assert per_image.mean() == pytest.approx(4.0, abs=1e-5)


def test_normalised_gains_and_distances():
    assert rb.normalized_absolute_gain(SOURCE, PROC).mean() == pytest.approx(1 / 6)
    assert rb.normalized_relative_gain(SOURCE, PROC).tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert rb.relative_gain_classic(SOURCE, PROC).tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert rb.wasserstein_score(SOURCE, PROC) == pytest.approx(1 / 6)
    assert rb.energy_distance_score(SOURCE, PROC) == pytest.approx(1 / 3)  # sqrt(7/9 - 4/9 - 2/9)
    # signed: the attack lowered the score -> negative
    assert rb.wasserstein_score(PROC, SOURCE) < 0


def test_msu_summary_signs_follow_the_metric_direction():
    group = pd.DataFrame({"f_clean": SOURCE, "f_def_adv": PROC})
    higher = rb.MsuRobustness().summarise(group, INFO)
    lower = rb.MsuRobustness().summarise(group, {**INFO, "higher_is_better": False})
    assert higher["robustness_score"] == pytest.approx(4.0, abs=1e-5)
    assert higher["normalized_absolute_gain"] == pytest.approx(1 / 6)
    assert lower["normalized_absolute_gain"] == pytest.approx(-1 / 6)
    assert lower["wasserstein_score"] == pytest.approx(-1 / 6)
    assert lower["robustness_score"] == pytest.approx(higher["robustness_score"])
    assert higher["robustness_score_ci_low"] < 4.0 < higher["robustness_score_ci_high"]
    assert "wasserstein_score_ci_low" not in higher


def test_constant_clean_scores_scale_like_sklearn():
    # all equal: MinMaxScaler uses scale 1, so s = 0 and s' = proc - min
    assert rb.normalized_absolute_gain([5.0, 5.0], [5.5, 5.0]).tolist() == pytest.approx([0.5, 0.0])
