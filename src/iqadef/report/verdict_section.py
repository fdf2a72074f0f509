"""The robustness verdict in the report (a ``protocol:`` run, docs/evaluation.md): the worst-case ranking
as the key finding with the study's non-adaptive ranking beside it, the flags, the threat model, the
robustness-vs-eps curves (one figure per metric) and the full verdict table.

The analysis is :mod:`iqadef.analysis.verdict`; this module adds the study's ranking to it (the report's own
:func:`~.tables.ranking_table` on the user's attacks only) and draws and formats it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iqadef.analysis.verdict import FLAGS, Verdict, has_protocol, study_rows, verdict
from iqadef.report.figures import figure_file_name, new_figure, png_data_uri, save_figure
from iqadef.report.files import ReportFiles
from iqadef.report.page import html_table
from iqadef.report.tables import fmt, markdown_table, ranking_table, with_ci

TITLE = "Robustness verdict: worst case over the protocol's attacks"
NOTE = (
    "Per image the verdict is the worst case (highest normalised gain |f(x) − f(D(x_a))| / (high − low)) over "
    "the ensemble within the budget: the non-adaptive attacks (the study's protocol, x_a shared by every "
    "defence), the adaptive white-box attack through the defence (BPDA/EOT) and the black-box attack through "
    "it. Means over images with 95% BCa bootstrap intervals. The study's ranking (non-adaptive attacks only, "
    "all of the run's own attacks pooled) is shown beside it for comparison and is not a robustness figure."
)


def protocol_verdict(df: pd.DataFrame, run_info: dict[str, Any]) -> Verdict | None:
    """The verdict of a protocol run with the study's ranking per metric beside it; None otherwise."""
    if not has_protocol(run_info):
        return None
    seed = run_info.get("seed", 0) if isinstance(run_info.get("seed"), int) else 0
    study = study_rows(df, run_info)
    metrics = list(dict.fromkeys(study["metric"])) if "metric" in study.columns else []
    rankings = {m: ranking_table(study, run_info, metric=m, seed=seed) for m in metrics}
    return verdict(df, run_info, rankings, seed=seed)


def flag_legend() -> list[str]:
    return [f"({code}) {text}" for code, text in FLAGS.items()]


def ranking_lines(result: Verdict) -> dict[str, list[dict[str, Any]]]:
    """Per metric, the worst-case ranking as the page lists it: defence, gain [CI], flags, the study's rank."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in result.ranking.itertuples(index=False):
        low, high = row.gain_worst_ci_low, row.gain_worst_ci_high
        value = (
            f"{fmt(row.gain_worst)} [{fmt(low)}, {fmt(high)}]"
            if np.isfinite(low) and np.isfinite(high)
            else fmt(row.gain_worst)
        )
        study = (
            ""
            if not np.isfinite(row.study_rank)
            else f"study's non-adaptive ranking: #{int(row.study_rank)} ({fmt(row.study_norm_gain)})"
        )
        out.setdefault(row.metric, []).append(
            {
                "rank": int(row.rank),
                "defence": row.defence,
                "value": value,
                "budget": row.budget,
                "flags": row.flags or "",
                "study": study,
                "evidence": row.evidence or "",
            }
        )
    return out


def curve_figures(result: Verdict, run_dir: Path, files: ReportFiles) -> list[tuple[str, Path]]:
    """One figure per metric: mean worst-case gain against eps per defence (L-inf; L2 in a second panel)."""
    out = []
    curves = result.curves
    if curves.empty:
        return out
    for metric, mine in curves.groupby("metric", sort=False):
        threats = list(dict.fromkeys(mine["threat"]))
        fig = new_figure(5.5 * len(threats), 4)
        for i, threat in enumerate(threats, start=1):
            ax = fig.add_subplot(1, len(threats), i)
            part = mine[mine["threat"] == threat]
            for defence, line in part.groupby("defence", sort=False):
                scale = 255.0 if threat == "linf" else 1.0
                ax.plot(
                    line["eps"].to_numpy(dtype=float) * scale,
                    line["gain_worst"].to_numpy(dtype=float),
                    marker="o",
                    label=str(defence),
                )
            ax.set_xlabel("eps (x/255)" if threat == "linf" else "eps (L2)", fontsize=9)
            ax.set_ylabel("worst-case normalised gain", fontsize=9)
            ax.set_title("L-inf budgets" if threat == "linf" else "L2 budgets", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
        fig.suptitle(f"Robustness against the budget ({metric}), lower is better", fontsize=10)
        out.append((metric, save_figure(fig, run_dir / "figures" / figure_file_name("verdict_curve", metric), files)))
    return out


def page_view(result: Verdict | None, curves: list[tuple[str, Path]], kind: str) -> dict[str, Any] | None:
    """What the templates show of the verdict (``kind``: ``html`` with embedded figures, or ``md``)."""
    if result is None:
        return None
    shown = result.table.drop(columns=["evidence"])
    table = html_table(with_ci(shown), "verdict") if kind == "html" else markdown_table(with_ci(shown))
    head = result.protocol.get("headline") or {}
    return {
        "title": TITLE,
        "note": NOTE,
        "threat_model": result.protocol.get("threat_model", ""),
        "legend": flag_legend(),
        "table": table,
        "rankings": [{"metric": m, "lines": lines} for m, lines in ranking_lines(result).items()],
        "headline": lines_budget(result) or f"{head.get('threat', 'linf')}",
        "figures": [
            {"label": label, "name": path.name, "uri": png_data_uri(path) if kind == "html" else None}
            for label, path in curves
        ],
    }


def lines_budget(result: Verdict) -> str:
    return str(result.ranking["budget"].iloc[0]) if len(result.ranking) else ""
