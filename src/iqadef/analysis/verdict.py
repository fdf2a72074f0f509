"""The robustness verdict of a protocol run (``protocol: quick | standard``; docs/evaluation.md).

Fed from the result table and run.json only, so ``iqadef report RUN_DIR`` rebuilds it. Per (metric, defence,
threat, budget) and image, the gain of each role of the ensemble (analysis/protocol.py) is the normalised gain
|f(x) - f(D(x_a))| / (high - low) the report ranks by (docs/scores.md "Ranking"); the verdict per image is
the worst case: the highest gain of any attack within the budget, the ensemble's cells at this and the
smaller budgets of the same threat and the user's non-adaptive attacks whose measured L-inf distance fits.
Means over images get the project's BCa bootstrap interval (:func:`~iqadef.analysis.scores.bootstrap_ci`).

The reliability flags follow Carlini et al. 2019's checklist, each with a rule stated here and in
docs/evaluation.md and evidence in words: (a) the worst case far above the non-adaptive figure, (b) a
black-box or non-adaptive attack beating the adaptive white-box one on some images (gradient masking
suspected), (c) the adaptive attack moving the score less as the budget grows, (d) the unbounded adaptive attack
not reaching the top of the metric's range through the defence, (e) a randomised defence whose gain on the
same x_a changes a lot between fresh draws.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iqadef.analysis.protocol import format_eps
from iqadef.analysis.scores import bootstrap_ci, metric_info, metric_span, normalised_gain, ok_rows
from iqadef.core import columns as score_columns

# -- the flags' thresholds (all gains normalised by the metric's range) ------------------------------
#: (a) fires when, at some budget, the worst case exceeds the non-adaptive gain by at least this much ...
A_MIN_DIFFERENCE = 0.10
#: ... and is at least this many times as large.
A_MIN_RATIO = 2.0
#: (b) an image counts when the best of the non-adaptive (study, transfer) and black-box attacks moves the score
#: further in the attacker's direction than the adaptive one, by more than this ...
B_MARGIN = 0.05
#: ... and the flag fires when, at some budget, at least this share of the images (and at least one) count.
B_MIN_SHARE = 0.2
#: (c) fires when the adaptive attack's mean rise at a larger budget is lower than at a smaller one by more.
C_TOLERANCE = 0.02
#: (d) an image reaches the top when the unbounded attack brings f(D(x_a)) within this share of the range
#: of the metric's better end (or beyond it) ...
D_TOP_SHARE = 0.05
#: ... and the flag fires when fewer than this share of the images do.
D_MIN_REACHED = 0.9
#: (e) fires when the mean over images of (highest - lowest gain over the fresh draws of D) exceeds this.
E_MAX_SPREAD = 0.05
#: An attack counts at an L-inf budget when its measured distance is within half an 8-bit level of it.
LINF_TOLERANCE = 0.5 / 255 + 1e-6

FLAGS = {
    "a": "worst case far above the non-adaptive figure",
    "b": "gradient masking suspected: black-box or non-adaptive beats the adaptive attack",
    "c": "gain not growing with the budget",
    "d": "unbounded attack does not reach the top of the range",
    "e": "verdict depends on the randomised defence's draw",
}
ROLE_COLUMNS = {
    "nonadaptive": "gain_nonadaptive",
    "transfer": "gain_transfer",
    "adaptive": "gain_adaptive",
    "blackbox": "gain_blackbox",
}
VERDICT_COLUMNS = (
    "metric",
    "defence",
    "threat",
    "eps",
    "budget",
    "n_images",
    "gain_nonadaptive",
    "gain_nonadaptive_ci_low",
    "gain_nonadaptive_ci_high",
    "gain_transfer",
    "gain_transfer_ci_low",
    "gain_transfer_ci_high",
    "gain_adaptive",
    "gain_adaptive_ci_low",
    "gain_adaptive_ci_high",
    "gain_blackbox",
    "gain_blackbox_ci_low",
    "gain_blackbox_ci_high",
    "gain_worst",
    "gain_worst_ci_low",
    "gain_worst_ci_high",
    "worst_by",
    "rise_nonadaptive",
    "rise_transfer",
    "rise_adaptive",
    "rise_blackbox",
    "redraw_spread",
    "cert_radius",
    "cert_applies_share",
    "cert_inside_share",
    "cert_room",
    "curve_area",
    "flags",
    "evidence",
)
RANKING_COLUMNS = (
    "rank",
    "metric",
    "defence",
    "budget",
    "gain_worst",
    "gain_worst_ci_low",
    "gain_worst_ci_high",
    "curve_area",
    "flags",
    "study_rank",
    "study_norm_gain",
    "evidence",
)


@dataclass
class Verdict:
    """The verdict's tables: ``table`` (verdict.csv), ``ranking`` (per metric, worst case at the headline
    budget), ``curves`` (eps -> mean worst-case gain, from eps 0 = the defence's own change of the score)
    and the run's protocol description (``protocol``: level, threat model, budgets)."""

    table: pd.DataFrame
    ranking: pd.DataFrame
    curves: pd.DataFrame
    protocol: dict[str, Any]


def has_protocol(run_info: dict[str, Any] | None) -> bool:
    return isinstance((run_info or {}).get("protocol"), dict)


def protocol_labels(run_info: dict[str, Any] | None) -> set[str]:
    """Attack labels the protocol added (not the user's entries that also play a role)."""
    protocol = (run_info or {}).get("protocol") or {}
    study = set(protocol.get("study", []))
    return {label for label in (protocol.get("cells") or {}) if label not in study}


def study_rows(df: pd.DataFrame, run_info: dict[str, Any] | None) -> pd.DataFrame:
    """The rows of the user's own attacks: the study's tables and rankings, as without the protocol."""
    added = protocol_labels(run_info)
    if not added or "attack" not in df.columns:
        return df
    return df[~df["attack"].isin(added)].reset_index(drop=True)


def _candidates(good: pd.DataFrame, protocol: dict[str, Any], linf_column: str | None) -> pd.DataFrame:
    """One row per (cell, budget it counts at): metric, defence, image, threat, eps, role, gain.

    ``linf_column`` is the run's column with the role ``attack_linf`` (:mod:`iqadef.core.columns`): the
    user's attacks count at each L-inf budget their measured L-inf fits; without it, only the protocol's own."""
    cells = protocol.get("cells") or {}
    study = set(protocol.get("study", []))
    linf_budgets = sorted(float(e) for e in (protocol.get("budgets") or {}).get("linf", []))
    parts = []
    for label, spec in cells.items():
        mine = good[good["attack"] == label]
        if len(mine):
            parts.append(mine.assign(threat=spec["threat"], eps=float(spec["eps"]), role=spec["role"]))
    if study and linf_column is not None and linf_column in good.columns:
        mine = good[good["attack"].isin(study) & (good["adaptive"].astype(str) == "none")]
        for eps in linf_budgets:
            fits = mine[pd.to_numeric(mine[linf_column], errors="coerce") <= eps + LINF_TOLERANCE]
            if len(fits):
                parts.append(fits.assign(threat="linf", eps=eps, role="nonadaptive"))
    if not parts:
        return pd.DataFrame(columns=["metric", "defence", "image", "threat", "eps", "role", "gain", "attack"])
    out = pd.concat(parts, ignore_index=True)
    return out


def _ci(values: pd.Series, seed: int) -> tuple[float, float, float]:
    mean, low, high, _ = bootstrap_ci(values.to_numpy(dtype=float), seed=seed)
    return mean, low, high


def _spread(rows: pd.DataFrame) -> float:
    """Mean over images of (highest - lowest gain over the fresh draws), the largest over the cells' roles."""
    if "redraw_gain_max" not in rows.columns:
        return math.nan
    spread = pd.to_numeric(rows["redraw_gain_max"], errors="coerce") - pd.to_numeric(
        rows["redraw_gain_min"], errors="coerce"
    )
    by_role = spread.groupby(rows["role"]).mean().dropna()
    return float(by_role.max()) if len(by_role) else math.nan


def verdict(
    df: pd.DataFrame,
    run_info: dict[str, Any],
    study_ranking: dict[str, pd.DataFrame] | None = None,
    seed: int | None = None,
) -> Verdict | None:
    """The verdict of a protocol run (None without ``protocol`` in run.json). ``study_ranking``: the study's
    non-adaptive ranking per metric (report.tables.ranking_table on the user's attacks), shown beside."""
    if not has_protocol(run_info):
        return None
    protocol = run_info["protocol"]
    seed = seed if seed is not None else (run_info.get("seed", 0) if isinstance(run_info.get("seed"), int) else 0)
    good = ok_rows(df)
    empty = Verdict(
        pd.DataFrame(columns=list(VERDICT_COLUMNS)),
        pd.DataFrame(columns=list(RANKING_COLUMNS)),
        pd.DataFrame(columns=["metric", "defence", "threat", "eps", "gain_worst"]),
        protocol,
    )
    if good.empty:
        return empty
    span = good["metric"].map(lambda m: metric_span(metric_info(run_info, m))).to_numpy(dtype=float)
    sign = good["metric"].map(lambda m: 1.0 if metric_info(run_info, m)["higher_is_better"] else -1.0)
    good = good.assign(
        gain=normalised_gain(good["f_clean"], good["f_def_adv"], 1.0) / span,
        gain_at_zero=normalised_gain(good["f_clean"], good["f_def_clean"], 1.0) / span,
        rise=sign.to_numpy(dtype=float) * (good["f_def_adv"] - good["f_def_clean"]).to_numpy(dtype=float) / span,
    )
    cand = _candidates(good, protocol, score_columns.column_with_role(score_columns.read(run_info), "attack_linf"))
    if cand.empty:
        return empty
    rows, curve_rows = [], []
    flags: dict[tuple[str, str], list[tuple[str, str]]] = {}
    certified = {
        label: float(c["eps"])
        for label, c in (run_info.get("certified") or {}).items()
        if isinstance(c, dict) and c.get("eps") is not None
    }
    for (metric, defence), mine in cand.groupby(["metric", "defence"], sort=False):
        info = metric_info(run_info, metric)
        bounded = mine[mine["role"] != "sanity"]
        per_image = bounded.groupby(["threat", "eps", "image", "role"])["gain"].max().unstack("role")
        rises = bounded.groupby(["threat", "eps", "image", "role"])["rise"].max().unstack("role")
        at_zero = float(
            good[(good["metric"] == metric) & (good["defence"] == defence)]
            .groupby("image")["gain_at_zero"]
            .mean()
            .mean()
        )
        table_rows = []
        for threat, by_threat in per_image.groupby(level="threat", sort=False):
            budgets = sorted(by_threat.index.get_level_values("eps").unique())
            running: pd.Series | None = None
            curve = [(0.0, at_zero)]
            for eps in budgets:
                at = by_threat.xs(eps, level="eps").droplevel("threat")
                best = at.max(axis=1)
                running = best if running is None else pd.concat([running, best], axis=1).max(axis=1)
                worst = running.reindex(at.index)
                row: dict[str, Any] = {
                    "metric": metric,
                    "defence": defence,
                    "threat": threat,
                    "eps": eps,
                    "budget": f"{threat}={format_eps(threat, eps)}",
                    "n_images": int(len(at)),
                }
                for role, column in ROLE_COLUMNS.items():
                    values = at[role] if role in at.columns else pd.Series(dtype=float)
                    row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"] = _ci(values, seed)
                row["gain_worst"], row["gain_worst_ci_low"], row["gain_worst_ci_high"] = _ci(worst, seed)
                rise_at = rises.xs((threat, eps), level=("threat", "eps"))
                for role in ROLE_COLUMNS:
                    row[f"rise_{role}"] = float(rise_at[role].mean()) if role in rise_at.columns else math.nan
                winners = at.idxmax(axis=1).value_counts()
                row["worst_by"] = ", ".join(f"{r} {n}" for r, n in winners.items())
                here = bounded[(bounded["threat"] == threat) & (bounded["eps"] == eps)]
                row["redraw_spread"] = _spread(here)
                if threat == "l2" and defence in certified and np.isclose(eps, certified[defence]):
                    row.update(_certified(here, eps, info))
                table_rows.append(row)
                curve.append((eps, row["gain_worst"]))
            area = _area(curve)
            for row in table_rows:
                if row["threat"] == threat:
                    row["curve_area"] = area
            curve_rows += [
                {"metric": metric, "defence": defence, "threat": threat, "eps": e, "gain_worst": g} for e, g in curve
            ]
        flags[(metric, defence)] = _flags(table_rows, rises, mine[mine["role"] == "sanity"], info)
        for row in table_rows:
            found = flags[(metric, defence)]
            row["flags"] = ",".join(code for code, _ in found)
            row["evidence"] = "; ".join(f"({code}) {text}" for code, text in found)
        rows += table_rows
    table = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    return Verdict(table, _ranking(table, protocol, study_ranking or {}), pd.DataFrame(curve_rows), protocol)


def _certified(cells: pd.DataFrame, radius: float, info: dict[str, Any]) -> dict[str, float]:
    """A certified defence at its own radius r: per image the attack that moved f_s(x_a) furthest in the
    attacker's direction, against the clean image's certified interval [l, u] (docs/certified.md).
    ``cert_applies_share``: images whose x_a is within r (8-bit storage adds an L2 distance of its own);
    ``cert_inside_share``: among them, f_s(x_a) inside [l, u] (the guarantee says so with probability
    >= 1 - alpha); ``cert_room``: mean distance from f_s(x_a) to the interval's end in the attacker's
    direction, over the range (how much further the certificate would let it go; negative: outside)."""
    out = {"cert_radius": radius, "cert_applies_share": math.nan, "cert_inside_share": math.nan, "cert_room": math.nan}
    needed = {"cert_lower_clean", "cert_upper_clean", "cert_applies"}
    if cells.empty or not needed <= set(cells.columns):
        return out
    best = cells.loc[cells.groupby("image")["rise"].idxmax()]
    low, high = (pd.to_numeric(best[c], errors="coerce") for c in ("cert_lower_clean", "cert_upper_clean"))
    fs = best["f_def_adv"].astype(float)
    applies = pd.to_numeric(best["cert_applies"], errors="coerce") == 1.0
    span = metric_span(info)
    room = (high - fs) / span if info["higher_is_better"] else (fs - low) / span
    out["cert_applies_share"] = float(applies.mean())
    if applies.any():
        out["cert_inside_share"] = float(((fs >= low) & (fs <= high))[applies].mean())
        out["cert_room"] = float(room[applies].mean())
    return out


def _area(curve: list[tuple[float, float]]) -> float:
    """Mean worst-case gain over [0, largest budget]: the area under the curve divided by the budget."""
    points = [(e, g) for e, g in curve if np.isfinite(g)]
    if len(points) < 2 or points[-1][0] <= 0:
        return math.nan
    xs, ys = zip(*points)
    return float(np.trapezoid(ys, xs) / xs[-1]) if hasattr(np, "trapezoid") else float(np.trapz(ys, xs) / xs[-1])


def _flags(
    rows: list[dict[str, Any]], rises: pd.DataFrame, sanity: pd.DataFrame, info: dict[str, Any]
) -> list[tuple[str, str]]:
    """The flags that fire for one (metric, defence), each with its evidence (rules: module constants).

    (a) compares the gains the verdict reports; (b) and (c) compare how far each attack moved the defended
    score in the attacker's direction, the *rise* s (f(D(x_a)) - f(D(x))) / range (s = +1 when higher is
    better): the gain also counts the defence's own change of the score (a blur that lowers it), which an
    attacker raising the score undoes, so a stronger attack can show a smaller gain."""
    found: list[tuple[str, str]] = []
    # (a) the study's number is not a robustness figure
    gaps = [
        (r["gain_worst"] - r["gain_nonadaptive"], r)
        for r in rows
        if np.isfinite(r["gain_worst"]) and np.isfinite(r["gain_nonadaptive"])
    ]
    gaps = [(g, r) for g, r in gaps if g >= A_MIN_DIFFERENCE and r["gain_worst"] >= A_MIN_RATIO * r["gain_nonadaptive"]]
    if gaps:
        g, r = max(gaps, key=lambda p: p[0])
        found.append(
            (
                "a",
                f"at {r['budget']} the worst case {r['gain_worst']:.3f} against {r['gain_nonadaptive']:.3f} "
                f"non-adaptive ({r['worst_by']})",
            )
        )
    # (b) gradient masking: a weaker-informed attack beats the white-box one on some images
    worst_b = None
    if "adaptive" in rises.columns:
        others = [c for c in ("nonadaptive", "transfer", "blackbox") if c in rises.columns]
        for (threat, eps), at in rises.groupby(level=["threat", "eps"], sort=False):
            if not others:
                break
            adaptive = at["adaptive"]
            best_other = at[others].max(axis=1)
            beaten = (best_other > adaptive + B_MARGIN) & adaptive.notna()
            n, k = int(adaptive.notna().sum()), int(beaten.sum())
            if n and k >= max(1, math.ceil(B_MIN_SHARE * n)):
                margin = float((best_other - adaptive)[beaten].mean())
                if worst_b is None or k / n > worst_b[0]:
                    worst_b = (
                        k / n,
                        f"at {threat}={format_eps(threat, eps)} on {k} of {n} images the "
                        f"{'/'.join(c for c in others)} attack moves the score further than the "
                        f"adaptive one, by {margin:.3f} of the range on average",
                    )
    if worst_b is not None:
        found.append(("b", worst_b[1]))
    # (c) gain must grow with eps
    for threat in dict.fromkeys(r["threat"] for r in rows):
        series = [
            (r["eps"], r["rise_adaptive"], r["budget"])
            for r in rows
            if r["threat"] == threat and np.isfinite(r["rise_adaptive"])
        ]
        series.sort()
        drops = [(a, b) for i, a in enumerate(series) for b in series[i + 1 :] if b[1] < a[1] - C_TOLERANCE]
        if drops:
            a, b = max(drops, key=lambda p: p[0][1] - p[1][1])
            found.append(
                (
                    "c",
                    f"the adaptive attack moves the score by {a[1]:.3f} of the range at {a[2]} but "
                    f"{b[1]:.3f} at {b[2]}",
                )
            )
            break
    # (d) the unbounded attack must reach the top of the range
    if len(sanity):
        low, high = info["range"]
        span = high - low or 1.0
        f = (
            sanity.groupby("image")["f_def_adv"].max()
            if info["higher_is_better"]
            else sanity.groupby("image")["f_def_adv"].min()
        )
        reached = f >= high - D_TOP_SHARE * span if info["higher_is_better"] else f <= low + D_TOP_SHARE * span
        share = float(reached.mean()) if len(reached) else math.nan
        if np.isfinite(share) and share < D_MIN_REACHED:
            end = "top" if info["higher_is_better"] else "bottom"
            found.append(
                (
                    "d",
                    f"the unbounded attack reached the {end} of the range [{low:g}, {high:g}] on "
                    f"{int(reached.sum())} of {len(reached)} images (median f(D(x_a)) "
                    f"{float(f.median()):.4g})",
                )
            )
    # (e) randomised defence: the verdict depends on the draw
    spreads = [(r["redraw_spread"], r["budget"]) for r in rows if np.isfinite(r.get("redraw_spread", math.nan))]
    if spreads:
        spread, budget = max(spreads)
        if spread > E_MAX_SPREAD:
            found.append(
                (
                    "e",
                    f"at {budget} the gain on the same x_a varies by {spread:.3f} on average between "
                    f"fresh draws of the defence",
                )
            )
    return found


def _ranking(table: pd.DataFrame, protocol: dict[str, Any], study: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per metric, defences by worst-case gain at the headline budget (lower first), the study's rank beside."""
    if table.empty:
        return pd.DataFrame(columns=list(RANKING_COLUMNS))
    head = protocol.get("headline") or {}
    threat, eps = head.get("threat", "linf"), float(head.get("eps", math.nan))
    at = table[(table["threat"] == threat) & np.isclose(table["eps"].astype(float), eps)]
    if at.empty:  # no headline budget: the largest of the first threat
        first = table["threat"].iloc[0]
        at = table[(table["threat"] == first) & (table["eps"] == table[table["threat"] == first]["eps"].max())]
    parts = []
    for metric, mine in at.groupby("metric", sort=False):
        mine = mine.sort_values("gain_worst", kind="stable").reset_index(drop=True)
        mine.insert(0, "rank", range(1, len(mine) + 1))
        ranked = study.get(metric)
        if ranked is not None and len(ranked):
            by_defence = ranked.set_index("defence")
            mine["study_rank"] = mine["defence"].map(by_defence["rank"])
            mine["study_norm_gain"] = mine["defence"].map(by_defence["norm_gain"])
        else:
            mine["study_rank"], mine["study_norm_gain"] = math.nan, math.nan
        parts.append(mine)
    out = pd.concat(parts, ignore_index=True)
    return out[[c for c in RANKING_COLUMNS if c in out.columns]]


def write_verdict(result: Verdict, run_dir: Path, write: Any) -> dict[str, Path]:
    """verdict.csv and verdict.parquet into ``run_dir`` through ``write(path, bytes)`` (atomic writers)."""

    buf = io.BytesIO()
    result.table.to_parquet(buf, index=False)
    return {
        "verdict_csv": write(run_dir / "verdict.csv", result.table.to_csv(index=False).encode("utf-8")),
        "verdict_parquet": write(run_dir / "verdict.parquet", buf.getvalue()),
    }
