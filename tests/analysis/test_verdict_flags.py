"""The verdict's worst case and its reliability flags (a)-(e) on synthetic result tables: each flag has a
table that makes it fire and one that keeps it quiet (rules: iqadef.analysis.verdict, docs/evaluation.md)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from iqadef.analysis import verdict as V
from iqadef.analysis.protocol import ROLE_ATTACKS, RoleSpec, describe, protocol_attacks

SPAN = 100.0  # metric range 0..100: a normalised gain g is a score change of 100 g
N = 10


def _info(level: str = "quick") -> dict:
    roles = {**ROLE_ATTACKS, ("blackbox", "linf"): RoleSpec("some-black-box", lambda eps, lv: {"eps": eps})}
    specs = protocol_attacks(level, roles)
    labels = {s.label: s for s in specs}
    return {
        "seed": 0,
        "metrics": {"m": {"name": "m", "range": [0, 100], "higher_is_better": True}},
        "protocol": describe(level, labels, ["study-attack"], {s.label: s.attack for s in specs}),
    }


def _rows(
    info: dict,
    gains: dict,
    defence: str = "d",
    sanity_f: float = 100.0,
    redraw: float | None = None,
    study_linf: float = 10 / 255,
) -> pd.DataFrame:
    """One row per protocol cell and image: ``gains[(role, eps)]`` is a normalised gain (a number or a list
    per image); missing roles get none. f(x) = 50; the sanity cell ends at ``sanity_f``."""
    rows = []
    cells = info["protocol"]["cells"]
    for label, spec in cells.items():
        key = (spec["role"], round(spec["eps"] * 255))
        if spec["role"] == "sanity":
            values = [None] * N
        elif key in gains:
            g = gains[key]
            values = list(g) if isinstance(g, (list, tuple, np.ndarray)) else [g] * N
        else:
            continue
        for i, g in enumerate(values):
            f_adv = sanity_f if spec["role"] == "sanity" else 50 + SPAN * g
            row = {
                "metric": "m",
                "defence": defence,
                "image": f"i{i}",
                "attack": label,
                "status": "ok",
                "adaptive": spec["adaptive"],
                "f_clean": 50.0,
                "f_def_clean": 50.0,
                "f_def_adv": f_adv,
                "linf_x_xa": spec["eps"],
            }
            if redraw is not None:
                base = (f_adv - 50) / SPAN
                row.update(redraw_gain_min=base - redraw / 2, redraw_gain_max=base + redraw / 2, redraw_gain_sd=0.0)
            rows.append(row)
    if ("study", 10) in gains:
        for i in range(N):
            rows.append(
                {
                    "metric": "m",
                    "defence": defence,
                    "image": f"i{i}",
                    "attack": "study-attack",
                    "status": "ok",
                    "adaptive": "none",
                    "f_clean": 50.0,
                    "f_def_clean": 50.0,
                    "f_def_adv": 50 + SPAN * gains[("study", 10)],
                    "linf_x_xa": study_linf,
                }
            )
    return pd.DataFrame(rows)


def _flags(df: pd.DataFrame, info: dict, defence: str = "d") -> dict[str, str]:
    result = V.verdict(df, info)
    row = result.table[result.table["defence"] == defence].iloc[0]
    codes = [c for c in row["flags"].split(",") if c]
    return {c: row["evidence"] for c in codes}


HEALTHY = {("nonadaptive", 4): 0.10, ("adaptive", 4): 0.15, ("nonadaptive", 10): 0.20, ("adaptive", 10): 0.30}


def test_worst_case_is_the_highest_gain_per_image_and_grows_with_the_budget():
    info = _info()
    gains = {
        ("nonadaptive", 4): [0.3] * 5 + [0.0] * 5,
        ("adaptive", 4): [0.0] * 5 + [0.2] * 5,
        ("nonadaptive", 10): 0.1,
        ("adaptive", 10): 0.1,
    }
    table = V.verdict(_rows(info, gains), info).table.set_index("budget")
    assert table.loc["linf=4/255", "gain_worst"] == pytest.approx(0.25)  # per image: max(0.3, 0) / max(0, 0.2)
    assert table.loc["linf=4/255", "gain_nonadaptive"] == pytest.approx(0.15)
    assert table.loc["linf=4/255", "gain_adaptive"] == pytest.approx(0.1)
    # the 4/255 perturbations are inside the 10/255 ball: the worst case keeps them
    assert table.loc["linf=10/255", "gain_worst"] == pytest.approx(0.25)
    low, high = table.loc["linf=4/255", ["gain_worst_ci_low", "gain_worst_ci_high"]]
    assert low <= 0.25 <= high and low < high


def test_the_users_attacks_count_where_their_measured_distance_fits():
    info = _info()
    gains = {**HEALTHY, ("study", 10): 0.6}
    table = V.verdict(_rows(info, gains), info).table.set_index("budget")
    assert table.loc["linf=10/255", "gain_nonadaptive"] == pytest.approx(0.6)
    assert table.loc["linf=4/255", "gain_nonadaptive"] == pytest.approx(0.1)  # 10/255 is outside 4/255
    far = V.verdict(_rows(info, gains, study_linf=12 / 255), info).table.set_index("budget")
    assert far.loc["linf=10/255", "gain_nonadaptive"] == pytest.approx(0.2)  # 12/255 is outside both


def test_healthy_defence_raises_no_flag():
    info = _info()
    assert _flags(_rows(info, HEALTHY, redraw=0.01), info) == {}


def test_flag_a_fires_when_the_worst_case_is_far_above_the_non_adaptive_gain():
    info = _info()
    flags = _flags(_rows(info, {**HEALTHY, ("nonadaptive", 10): 0.03, ("adaptive", 10): 0.6}), info)
    assert set(flags) == {"a"} and "0.600 against 0.030" in flags["a"]
    # 2.5 times as large but only 0.09 more: quiet
    assert "a" not in _flags(_rows(info, {**HEALTHY, ("nonadaptive", 10): 0.06, ("adaptive", 10): 0.15}), info)


def test_flag_b_fires_when_a_non_adaptive_attack_beats_the_adaptive_one_on_some_images():
    info = _info()
    beaten = {**HEALTHY, ("adaptive", 10): [0.01] * 3 + [0.4] * 7}  # 3 of 10 images: adaptive far below 0.2
    flags = _flags(_rows(info, beaten), info)
    assert "b" in flags and "on 3 of 10 images" in flags["b"]
    close = {**HEALTHY, ("adaptive", 10): [0.17] * 3 + [0.4] * 7}  # 0.03 below: within the margin
    assert "b" not in _flags(_rows(info, close), info)
    one = {**HEALTHY, ("adaptive", 10): [0.01] + [0.4] * 9}  # one image in ten: below the share
    assert "b" not in _flags(_rows(info, one), info)


def test_flag_b_counts_the_black_box_attack():
    info = _info()
    flags = _flags(_rows(info, {**HEALTHY, ("blackbox", 10): 0.5}), info)
    assert "b" in flags and "on 10 of 10 images the nonadaptive/blackbox attack" in flags["b"]
    assert "b" not in _flags(_rows(info, {**HEALTHY, ("blackbox", 10): 0.28}), info)


def test_flag_c_fires_when_the_adaptive_gain_falls_as_the_budget_grows():
    info = _info()
    flags = _flags(_rows(info, {**HEALTHY, ("adaptive", 4): 0.3, ("adaptive", 10): 0.2}), info)
    assert "c" in flags and "by 0.300 of the range at linf=4/255 but 0.200 at linf=10/255" in flags["c"]
    assert "c" not in _flags(_rows(info, {**HEALTHY, ("adaptive", 4): 0.21, ("adaptive", 10): 0.2}), info)


def test_flag_d_fires_when_the_unbounded_attack_does_not_reach_the_top():
    info = _info()
    flags = _flags(_rows(info, HEALTHY, sanity_f=70.0), info)
    assert "d" in flags and "on 0 of 10 images" in flags["d"]
    assert "d" not in _flags(_rows(info, HEALTHY, sanity_f=96.0), info)  # within 5% of the top
    assert "d" not in _flags(_rows(info, HEALTHY, sanity_f=300.0), info)  # past it


def test_flag_d_for_a_lower_is_better_metric_looks_at_the_bottom():
    info = _info()
    info["metrics"]["m"]["higher_is_better"] = False
    assert "d" in _flags(_rows(info, HEALTHY, sanity_f=100.0), info)
    assert "d" not in _flags(_rows(info, HEALTHY, sanity_f=2.0), info)


def test_flag_e_fires_when_fresh_draws_of_the_defence_change_the_gain():
    info = _info()
    flags = _flags(_rows(info, HEALTHY, redraw=0.2), info)
    assert "e" in flags and "varies by 0.200" in flags["e"]
    assert "e" not in _flags(_rows(info, HEALTHY, redraw=0.02), info)
    assert "e" not in _flags(_rows(info, HEALTHY), info)  # a deterministic defence has no re-draws


def test_ranking_puts_the_headline_budget_first_and_keeps_the_study_rank():
    info = _info()
    df = pd.concat(
        [
            _rows(info, HEALTHY, defence="robust"),
            _rows(info, {**HEALTHY, ("nonadaptive", 10): 0.01, ("adaptive", 10): 0.7}, defence="masked"),
        ]
    )
    study = {"m": pd.DataFrame({"defence": ["masked", "robust"], "rank": [1, 2], "norm_gain": [0.01, 0.2]})}
    ranking = V.verdict(df, info, study).ranking
    assert list(ranking["defence"]) == ["robust", "masked"]
    assert list(ranking["study_rank"]) == [2, 1] and (ranking["budget"] == "linf=10/255").all()
    assert ranking.loc[ranking["defence"] == "masked", "flags"].iloc[0] == "a"


def test_curve_starts_at_the_defences_own_change_and_its_area_is_the_mean_over_the_budget():
    info = _info()
    df = _rows(info, HEALTHY)
    df["f_def_clean"] = 55.0  # the defence moves the clean score by 0.05 of the range
    result = V.verdict(df, info)
    curve = result.curves[result.curves["defence"] == "d"]
    assert list(curve["gain_worst"].round(6)) == [0.05, 0.15, 0.3]
    e1, e2 = 4 / 255, 10 / 255
    expected = ((0.05 + 0.15) / 2 * e1 + (0.15 + 0.3) / 2 * (e2 - e1)) / e2
    assert result.table["curve_area"].iloc[0] == pytest.approx(expected)


def test_without_protocol_there_is_no_verdict_and_every_row_is_the_studys():
    df = pd.DataFrame({"attack": ["a"], "metric": ["m"]})
    assert V.verdict(df, {"metrics": {}}) is None
    assert V.study_rows(df, {}) is df
    info = _info()
    rows = _rows(info, {**HEALTHY, ("study", 10): 0.5})
    assert set(V.study_rows(rows, info)["attack"]) == {"study-attack"}
    assert not math.isnan(V.verdict(rows, info).table["gain_worst"].iloc[0])


def test_certified_defence_shows_the_best_attack_at_its_radius_beside_its_interval():
    roles = {**ROLE_ATTACKS}
    specs = protocol_attacks("quick", roles, radii=(0.25,))
    info = {
        "seed": 0,
        "metrics": {"m": {"name": "m", "range": [0, 100], "higher_is_better": True}},
        "certified": {"ms": {"name": "median-smoothing", "eps": 0.25, "sigma": 0.12, "n": 100, "alpha": 0.001}},
        "protocol": describe("quick", {s.label: s for s in specs}, [], {s.label: s.attack for s in specs}, (0.25,)),
    }
    assert info["protocol"]["budgets"]["l2"] == [0.25] and "0.25" in info["protocol"]["threat_model"]
    rows = []
    for label, spec in info["protocol"]["cells"].items():
        if spec["threat"] != "l2":
            continue
        for i in range(N):
            f_s = 60.0 if spec["role"] == "adaptive" else 55.0  # the adaptive attack goes further
            f_s += 10.0 if i == 0 else 0.0  # image 0 leaves the interval [40, 62]
            rows.append(
                {
                    "metric": "m",
                    "defence": "ms",
                    "image": f"i{i}",
                    "attack": label,
                    "status": "ok",
                    "adaptive": spec["adaptive"],
                    "f_clean": 50.0,
                    "f_def_clean": 50.0,
                    "f_def_adv": f_s,
                    "cert_lower_clean": 40.0,
                    "cert_upper_clean": 62.0,
                    "cert_applies": float(i != 9),
                }
            )
    table = V.verdict(pd.DataFrame(rows), info).table
    row = table[(table["threat"] == "l2")].iloc[0]
    assert row["cert_radius"] == 0.25 and row["cert_applies_share"] == pytest.approx(0.9)
    assert row["cert_inside_share"] == pytest.approx(8 / 9)  # image 0 (70 > 62) is outside; image 9 not covered
    assert row["cert_room"] == pytest.approx(((62 - 70) + 8 * (62 - 60)) / 9 / 100)
    plain = V.verdict(_rows(_info(), HEALTHY), _info()).table
    assert plain["cert_radius"].isna().all()
