"""``report.html`` (one offline file) and ``report.md`` from the jinja2 templates in ``templates/``.

The page reads top-down: the run and its dataset's problems, the key findings, the rankings per metric,
the paper's Figures 3-5, an image comparison (clean / attacked / defended with their scores; the reader
picks metric, image, attack and defence), then the full tables (sortable, filterable), failed cells and
notes, with a table of contents. Everything is embedded (figures as PNG, thumbnails as WebP/JPEG data
URIs, the comparison's data as JSON); the page's only script is a few lines of vanilla JS in the template.

The HTML environment autoescapes every value. Plain strings are escaped by the standard library's
``html.escape`` (quotes as ``&quot;``/``&#x27;``) rather than by markupsafe's ``&#34;``/``&#39;``. Only
the tables pass as :class:`~markupsafe.Markup`, built here by pandas' ``to_html`` with its escaping on,
and the comparison's JSON, in which ``<``, ``>`` and ``&`` are written as ``\\u003c`` etc. so that no
label can close the script element. The markdown environment escapes nothing: labels appear as they are.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from iqadef.analysis.scores import CONFIDENCE, metric_info, metric_span, paper_gain, score_warnings
from iqadef.core import columns as score_columns
from iqadef.report.certified import certified_table, certified_warnings
from iqadef.report.figures import (
    MAX_LINES,
    ImageLocator,
    ReportFigures,
    ThumbnailCache,
    png_data_uri,
    thumbnail_data_uri,
)
from iqadef.report.files import ReportFiles
from iqadef.report.glance import (
    GEOMETRIC_MARK,
    GEOMETRIC_NOTE,
    baseline_defences,
    best_per_attack,
    geometric_defences,
    quality_column,
    quality_label,
)
from iqadef.report.robust_metrics import robust_metrics_section
from iqadef.report.tables import ReportTables, fmt, key_directions, key_findings, key_scores, markdown_table, with_ci

TEMPLATES = Path(__file__).parent / "templates"
MAX_FAILED_ROWS = 200

ADAPTIVE_TITLE = "Adaptive attacks: gain without and with attacking through the defence"
ADAPTIVE_NOTE = (
    "Each adaptive attack `X@mode` attacks f(D(x)) through the defence (BPDA for non-differentiable "
    "defences, EOT over randomised ones) and is paired with its non-adaptive twin `X` on the same "
    "images. gain_difference = adaptive − non-adaptive gain, with a 95% CI of the paired per-image "
    "difference; a clearly positive difference means the defence's gain under the non-adaptive "
    "attack overstates its robustness (obfuscated gradients, Athalye et al. 2018). rise = "
    "(f(D(x_a)) − f(D(x))) / metric range, signed so that positive is the attacker's direction: "
    "unlike the gain it does not count a defence's own change of the score as the attack's."
)

NOTES = [
    f"Confidence intervals: two-sided {int(CONFIDENCE * 100)}% Student-t interval of the mean over images "
    "(as the MSU robustness benchmark); SROCC intervals by the Fisher z-transform with variance 1.06/(n-3); "
    "the rankings' intervals are BCa bootstrap intervals over images (scipy.stats.bootstrap).",
    "Gain = |f(x) - f(D(x_a))| / f(x) (lower is better); the 'clean' row is |f(x) - f(D(x))| / f(x).",
    "Rankings use the normalised gain |f(x) - f(D(x_a))| / (high - low) of the metric's range: unlike the gain "
    "it is valid for metrics whose scores reach 0 or below and comparable between metrics.",
    "PSNR uses data range 1; identical images give +inf (scikit-image, as the reference), which means leave "
    "out and count in the column's _n_inf.",
    "Defended images compared with x or x_a are first resized to x's size (bilinear, as the reference).",
    "Failed cells are excluded from every score and counted in n_failed.",
]

#: The comparison's per-cell values: JSON key -> result-table column.
COMPARISON_VALUES = {"f_x": "f_clean", "f_xa": "f_adv", "f_dxa": "f_def_adv"}
#: ... and JSON key -> the role of the score column that holds it (iqadef.core.columns.ROLES; null without one).
COMPARISON_ROLES = {
    "psnr_xa": "attack_psnr",
    "ssim_xa": "attack_ssim",
    "psnr_dxa": "defended_psnr",
    "ssim_dxa": "defended_ssim",
    "gain": "paper_gain",
}


def figure4_title(mos: bool) -> str:
    if mos:
        return "Figure 4: SROCC with MOS"
    return (
        "Figure 4: SROCC with the clean scores f(x) (no MOS file was given: how well each defence keeps "
        "the metric's own ranking of the images)"
    )


# -- the run header -------------------------------------------------------------------------------
def _count(values: pd.Series | None) -> int:
    return 0 if values is None else int(len(dict.fromkeys(values)))


def run_facts(run_dir: Path, run_info: dict[str, Any], df: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, text) pairs of the header: grid, device, time, seed, dataset, MOS, metrics."""
    dataset = run_info.get("dataset", {}) or {}
    registry = run_info.get("registry", {}) or {}
    col = lambda c: df[c] if c in df.columns else None  # noqa: E731
    n_img, n_met, n_att, n_def = (_count(col(c)) for c in ("image", "metric", "attack", "defence"))
    ok = int((df["status"].astype(str) == "ok").sum()) if "status" in df.columns else len(df)
    facts = [
        (
            "grid",
            f"{n_img} images × {n_met} metrics × {n_att} attacks × {n_def} defences = "
            f"{n_img * n_met * n_att * n_def} cells; {len(df)} in the table: {ok} ok, {len(df) - ok} failed",
        )
    ]
    device = run_info.get("device") or f"{registry.get('device', 'auto')} (as configured)"
    threads = run_info.get("torch_threads")
    facts.append(("device", f"{device}" + (f", {threads} torch threads" if threads else "")))
    table = next((run_dir / n for n in ("results.parquet", "results.csv") if (run_dir / n).exists()), None)
    when = [f"started {run_info['started']}"] if run_info.get("started") else []
    if isinstance(run_info.get("seconds"), (int, float)):
        when.append(f"took {run_info['seconds']:.0f} s")
    if table is not None:
        stamp = datetime.fromtimestamp(table.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        when.append(f"results written {stamp}")
    facts.append(("time", "; ".join(when) or "?"))
    facts.append(("seed", str(run_info.get("seed", "?"))))
    count = dataset.get("count")
    facts.append(("images", f"{dataset.get('images', '?')}" + (f" ({count} images)" if count is not None else "")))
    facts.append(("MOS", str(dataset.get("mos") or "none")))
    for label, m in (run_info.get("metrics", {}) or {}).items():
        facts.append(
            (
                f"metric {label}",
                f"range {m.get('range')}, {'higher' if m.get('higher_is_better', True) else 'lower'} is better",
            )
        )
    return facts


def dataset_problems(run_info: dict[str, Any], df: pd.DataFrame) -> list[str]:
    """Files the run left out (``run.json``) and, with a MOS file, the images that have no MOS."""
    dataset = run_info.get("dataset", {}) or {}
    problems = [str(p) for p in dataset.get("problems", []) or []]
    if dataset.get("mos") and {"image", "mos"} <= set(df.columns):
        per_image = df.drop_duplicates("image")
        missing = per_image[~np.isfinite(pd.to_numeric(per_image["mos"], errors="coerce"))]["image"].tolist()
        if missing and not any("no MOS for" in p for p in problems):
            problems.append(f"{len(missing)} image(s) without MOS, e.g. {missing[0]!r}: left out of the SROCC with MOS")
    return problems


def run_header(run_info: dict[str, Any]) -> list[str]:
    """The lines under the title of report.md: seed, images, MOS file, and each metric's range and direction."""
    dataset = run_info.get("dataset", {}) or {}
    lines = [
        f"seed: {run_info.get('seed', '?')}",
        f"images: {dataset.get('images', '?')}",
        f"MOS: {dataset.get('mos') or 'none'}",
    ]
    for label, m in (run_info.get("metrics", {}) or {}).items():
        lines.append(
            f"metric {label}: range {m.get('range')}, "
            f"{'higher' if m.get('higher_is_better', True) else 'lower'} is better"
        )
    return lines


# -- jinja2 ---------------------------------------------------------------------------------------
def _escape_as_html_escape(value: Any) -> Any:
    """The HTML environment's ``finalize``: a plain value escaped by ``html.escape`` (autoescaping then
    leaves the Markup alone); Markup passes as it is."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


@lru_cache(maxsize=None)
def _environment(kind: str) -> jinja2.Environment:
    """``html``: autoescaping; ``md``: none. Block tags on their own lines leave no blank lines."""
    options: dict[str, Any] = {
        "loader": jinja2.FileSystemLoader(TEMPLATES),
        "undefined": jinja2.StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": False,
    }
    if kind == "html":
        return jinja2.Environment(autoescape=True, finalize=_escape_as_html_escape, **options)
    return jinja2.Environment(autoescape=False, **options)


def html_table(table: pd.DataFrame, css_class: str, table_id: str | None = None) -> Markup:
    """``table`` as HTML in a scrolling box; pandas escapes every cell and header (``escape=True``).

    A filter box goes above it; the page's script sorts the table when a header is clicked and hides the
    rows that do not contain the filter's text.
    """
    if table.empty:
        return Markup("<p><em>(empty)</em></p>")
    body = table.to_html(
        index=False,
        classes=f"{css_class} sortable",
        border=0,
        escape=True,
        float_format=lambda v: fmt(v),
        na_rep="–",
        table_id=table_id,
    )
    body = re.sub(r">\s+<", "><", body)  # pandas indents every cell: a third of a wide table's bytes
    box = f"<input type='search' class='filter' placeholder='filter rows…' aria-label='filter {css_class} rows'>"
    return Markup(f"<div class='table-box'>{box}<div class='scroll'>{body}</div></div>")


def means_only(agg: pd.DataFrame) -> pd.DataFrame:
    """The aggregated table with its means alone (``x_mean`` shown as ``x``): the page's widest table at a
    third of the bytes; the intervals are in the key-score table and summary.csv."""
    keep = agg.drop(columns=[c for c in agg.columns if c.endswith(("_ci_low", "_ci_high"))])
    return keep.rename(columns={c: c.rsplit("_", 1)[0] for c in keep.columns if c.endswith(("_mean", "_median"))})


def _json_for_script(value: Any) -> Markup:
    """JSON that is safe inside a ``<script>`` element (no ``<``, ``>``, ``&``; NaN as null)."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _number(value: Any) -> float | str | None:
    """A finite float, "∞"/"-∞" (PSNR of identical images), or None (no value)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return None if math.isnan(v) else v


def _slug(text: str, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "metric"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def trained_warnings(df: pd.DataFrame) -> list[str]:
    """One line per metric or defence evaluated on images it was trained on (``trained_on_image``, from the
    training records of fcn, dms-iqa, drs and train-robust checkpoints): those cells are not held out."""
    if "trained_on_image" not in df.columns:
        return []
    marked = df[df["trained_on_image"].fillna(False).astype(bool)]
    lines = []
    for (metric, defence), cells in marked.groupby(["metric", "defence"], sort=False):
        lines.append(
            f"{metric} × {defence}: {cells['image'].nunique()} of the images were in the training data of "
            f"the metric or the defence ({len(cells)} cells marked trained_on_image): not held-out results; "
            f"train on other images to compare it fairly"
        )
    return lines


# -- the sections ---------------------------------------------------------------------------------
def _figure_sections(figures: ReportFigures, mos: bool, data_uris: bool) -> list[dict[str, Any]]:
    """Figures 3-5: id, title, the text shown when a section has no figure, and each figure's label and file."""
    sections = [
        (
            "fig3",
            "Figure 3: gain heatmap",
            figures.gain,
            "no successful cells",
            "Defences (columns) sorted by mean gain over the attacks, lowest first.",
        ),
        (
            "fig4",
            figure4_title(mos),
            figures.srocc,
            "not enough images for SROCC",
            "Columns in Figure 3's order: one column is one defence in both.",
        ),
        (
            "fig5",
            "Figure 5: gain against SSIM(x, x_a) and attacked metric value",
            figures.bins,
            "no data",
            f"One line per defence, at most the {MAX_LINES} with the lowest mean gain over the bins (the "
            f"legend says which, and how many of the run's defences), so the lines stay readable; every "
            f"defence's gains are in the summary table and summary.csv.",
        ),
    ]
    return [
        {"id": sid, "title": title, "empty": empty, "note": note, "figures": _figure_list(items, data_uris)}
        for sid, title, items, empty, note in sections
    ]


def _figure_list(items: list[tuple[str, Path]], data_uris: bool) -> list[dict[str, Any]]:
    return [
        {"label": label, "name": path.name, "uri": png_data_uri(path) if data_uris else None} for label, path in items
    ]


# -- the answer at a glance (per attack the best defence, the trade-off figure) and the certified section ---
BEST_HEADERS = {
    "attack": "attack",
    "best_defence": "best defence",
    "norm_gain": "normalised gain",
    "norm_gain_no_defence": "no-defence's normalised gain",
    "n_images": "images",
}


def quality_view(run_info: dict[str, Any]) -> dict[str, Any] | None:
    """The declared quality column (:func:`~.glance.quality_column`) as the templates name it: ``name``,
    ``label`` (its title), ``direction``, ``best`` ("highest"/"lowest") and ``better_change`` (the sign of a
    change against no-defence that is an improvement); None when the run declares none."""
    column = quality_column(run_info)
    if column is None:
        return None
    higher = column.direction == "higher"
    return {
        "name": column.name,
        "label": quality_label(column),
        "direction": column.direction,
        "best": "highest" if higher else "lowest",
        "better_change": "positive" if higher else "negative",
    }


def best_headers(run_info: dict[str, Any]) -> dict[str, str]:
    """The best-defence table's headers, the quality ones named by the declared quality column's title."""
    quality = quality_view(run_info)
    if quality is None:
        return dict(BEST_HEADERS)
    label = quality["label"]
    named = {
        "quality": label,
        "quality_no_defence": f"no-defence's {label}",
        "quality_change": f"{label} − no-defence's",
    }
    return {**BEST_HEADERS, **named}


def glance_sections(
    df: pd.DataFrame, run_info: dict[str, Any], figures: ReportFigures, data_uris: bool
) -> list[dict[str, Any]]:
    """Per metric: the best defence per attack (geometric ones marked) and the gain-quality figure."""
    drawn = dict(figures.tradeoff)
    headers = best_headers(run_info)
    out = []
    for metric in dict.fromkeys(df["metric"]) if "metric" in df.columns else []:
        best = best_per_attack(df, run_info, metric)
        if best.empty:
            continue
        marked = set(geometric_defences(list(dict.fromkeys(df["defence"])), run_info))
        best["best_defence"] = [f"{d}{GEOMETRIC_MARK}" if d in marked else d for d in best["best_defence"]]
        figure = _figure_list([(metric, drawn[metric])], data_uris)[0] if metric in drawn else None
        out.append(
            {"metric": metric, "best": best.rename(columns=headers), "figure": figure, "geometric": sorted(marked)}
        )
    return out


def certified_section(
    df: pd.DataFrame, run_info: dict[str, Any], figures: ReportFigures, data_uris: bool
) -> dict[str, Any] | None:
    """The certified defences' table and warnings (:mod:`.certified`) and the radius figures; None when the
    run has no certified defence."""
    table = certified_table(df, run_info)
    if table.empty and not figures.certified:
        return None
    return {
        "table": table,
        "warnings": certified_warnings(table, run_info),
        "figures": _figure_list(figures.certified, data_uris),
    }


ROBUST_METRICS_TITLE = "Fine-tuned metrics beside their originals"
ROBUST_METRICS_NOTE = (
    "A fine-tuned metric (its weights carry an `iqadef train-robust` record: run.json's metrics.<label>.trained) "
    "beside the run's metric of the same plugin without one. Accuracy, over the images both scored: Pearson and "
    "Spearman correlation of the two metrics' clean scores f(x), and each one's SROCC/PLCC against MOS where the "
    "run has MOS. Robustness, per attack with no defence: mean normalised gain |f(x) − f(x_a)| / (high − low) of "
    "each, and gain_change = fine-tuned − original (negative: the fine-tuned metric moves less under attack); "
    "for a protocol run, the worst-case verdict's gain of the no-defence row at the headline budget. "
    "The training images are in the training record; cells on them are marked trained_on_image."
)


def robust_metrics_view(
    df: pd.DataFrame, run_info: dict[str, Any], verdict_ranking: pd.DataFrame | None, kind: str
) -> dict[str, Any] | None:
    """The fine-tuned-metric section (:mod:`.robust_metrics`) as the templates show it; None without a pair."""
    section = robust_metrics_section(df, run_info, verdict_ranking)
    if section is None:
        return None
    table = (lambda t, css: html_table(t, css)) if kind == "html" else (lambda t, css: markdown_table(t))
    return {
        "title": ROBUST_METRICS_TITLE,
        "note": ROBUST_METRICS_NOTE,
        "accuracy": table(section["accuracy"], "robust-accuracy"),
        "robustness": table(section["robustness"], "robust-gain"),
    }


def _thumb_key(column: str, value: str, image: str) -> tuple[str, str]:
    return (column, value if column != "image_path" else f"{value}\0{image}")


def comparison_data(
    run_dir: Path, run_info: dict[str, Any], tables: ReportTables, files: ReportFiles, locate: ImageLocator
) -> dict[str, Any]:
    """Every saved example as the picker shows it: thumbnails (each image once) and the cell's values.

    ``thumbs`` holds the data URIs ("" for a file that is missing or unreadable); a cell names its clean,
    attacked and defended thumbnails by index, with f(x), f(x_a), f(D(x_a)), PSNR/SSIM of x_a and D(x_a)
    against x, the gain and the normalised gain (null where the table has no value).
    """
    rows = tables.examples.to_dict("records")
    declared = score_columns.read(run_info)
    values = {
        **COMPARISON_VALUES,
        **{key: score_columns.column_with_role(declared, role) for key, role in COMPARISON_ROLES.items()},
    }
    wanted: dict[tuple[str, str], tuple[str, str, str]] = {}
    for row in rows:
        image = str(row.get("image", ""))
        for column in ("image_path", "adv_path", "example_path"):
            value = str(row.get(column, ""))
            wanted.setdefault(_thumb_key(column, value, image), (value, column, image))
    cache = ThumbnailCache(run_dir, files)  # images thumbnailed by an earlier report are not decoded again
    # decoding and encoding release the GIL: threads make the few hundred thumbnails several times faster
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        uris = list(pool.map(lambda job: thumbnail_data_uri(locate.find(*job), files, cache=cache), wanted.values()))
    cache.save()
    thumbs: list[str] = []
    by_uri: dict[str, int] = {}  # the same pixels once (no-defence's D(x_a) is x_a)
    index: dict[tuple[str, str], int] = {}
    for key, uri in zip(wanted, uris):
        index[key] = by_uri.setdefault(uri, len(by_uri))
        if index[key] == len(thumbs):
            thumbs.append(uri)

    def thumb(column: str, value: str, image: str) -> int:
        return index[_thumb_key(column, value, image)]

    cells = []
    for row in rows:
        image = str(row.get("image", ""))
        span = metric_span(metric_info(run_info, str(row["metric"])))
        cell = {
            "m": str(row["metric"]),
            "i": image,
            "a": str(row["attack"]),
            "d": str(row["defence"]),
            "x": thumb("image_path", str(row.get("image_path", "")), image),
            "xa": thumb("adv_path", str(row.get("adv_path", "")), image),
            "dxa": thumb("example_path", str(row.get("example_path", "")), image),
        }
        for key, column in values.items():
            cell[key] = None if column is None else _number(row.get(column))
        f_x, f_dxa = cell["f_x"], cell["f_dxa"]
        finite = isinstance(f_x, float) and isinstance(f_dxa, float)
        cell["norm_gain"] = abs(f_x - f_dxa) / span if finite else None
        if cell["gain"] is None and finite and f_x != 0.0:
            cell["gain"] = float(paper_gain(f_x, f_dxa))  # the gain plugin is off
        cells.append(cell)
    return {"thumbs": thumbs, "cells": cells}


def _baselines(df: pd.DataFrame, run_info: dict[str, Any]) -> tuple[str, ...]:
    """Defences whose D(x_a) is x_a itself (no-defence; certified defences smooth the metric, not the image):
    their quality score is the attacked image's, so they are not named among the highest quality."""
    labels = list(dict.fromkeys(df["defence"])) if "defence" in df.columns else []
    return tuple(baseline_defences(labels, run_info)) + tuple((run_info.get("certified") or {}))


def _notes(files: ReportFiles) -> list[str]:
    extra = files.unreadable_note()
    return list(NOTES) + ([extra] if extra else [])


def _findings_html(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Key findings with each value as "m [lo, hi]" text."""

    def text(m, lo, hi):
        return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else fmt(m)

    return [
        {
            "metric": f["metric"],
            "by_gain": [(d, text(m, lo, hi)) for d, m, lo, hi in f["by_gain"]],
            "by_quality": [(d, text(m, lo, hi)) for d, m, lo, hi in f["by_quality"]],
        }
        for f in findings
    ]


def write_html(
    run_dir: Path,
    run_info: dict[str, Any],
    tables: ReportTables,
    figures: ReportFigures,
    files: ReportFiles,
    df: pd.DataFrame | None = None,
    locate: ImageLocator | None = None,
    verdict: dict[str, Any] | None = None,
    verdict_ranking: pd.DataFrame | None = None,
) -> Path:
    """``report.html``: one offline file, sections in reading order with a table of contents."""
    df = df if df is not None else pd.DataFrame()
    locate = locate or ImageLocator(run_dir, run_info)
    taken: set[str] = set()
    rankings = [
        {"metric": m, "id": "ranking-" + _slug(m, taken), "table": html_table(with_ci(t), "ranking")}
        for m, t in tables.rankings.items()
    ]
    adaptive = tables.adaptive
    figure_sections = _figure_sections(figures, tables.mos, data_uris=True)
    data = comparison_data(run_dir, run_info, tables, files, locate)
    glance = glance_sections(df, run_info, figures, data_uris=True)
    certified = certified_section(df, run_info, figures, data_uris=True)
    robust_metrics = robust_metrics_view(df, run_info, verdict_ranking, "html")
    pooled = len(tables.rankings) > 1
    toc = [("run", "The run")] + ([("glance", "Best defence per attack")] if glance else [])
    toc += [("findings", "Key findings")]
    toc += [("verdict", "Robustness verdict")] if verdict else []  # a protocol run (verdict_section.py)
    toc += [("robust-metrics", ROBUST_METRICS_TITLE)] if robust_metrics else []
    toc += [("rankings", "Rankings")]
    toc += [(r["id"], f"Ranking: {r['metric']}") for r in rankings]
    toc += [("ranking-pooled", "Ranking: all metrics")] if pooled else []
    toc += [(s["id"], s["title"].split(" (")[0]) for s in figure_sections]
    toc += [("certified", "Certified defences")] if certified else []
    toc += [("comparison", "Image comparison"), ("tables", "Full tables"), ("summary", "Summary")]
    toc += [("adaptive", "Adaptive attacks")] if adaptive is not None else []
    toc += [
        ("key-scores", "Key scores"),
        ("all-scores", "All aggregated scores"),
        ("failed", "Failed cells"),
        ("notes", "Notes"),
    ]
    key = key_scores(tables.formatted, run_info)
    page = (
        _environment("html")
        .get_template("report.html.j2")
        .render(
            run_name=run_dir.name,
            facts=run_facts(run_dir, run_info, df),
            problems=dataset_problems(run_info, df),
            warnings=score_warnings(run_info.get("metrics", {}) or {}, df) + trained_warnings(df),
            toc=toc,
            findings=_findings_html(
                key_findings(tables.rankings, baselines=_baselines(df, run_info), run_info=run_info)
            ),
            rankings=rankings,
            pooled=html_table(with_ci(tables.ranking), "ranking") if pooled else None,
            glance=[dict(g, best=html_table(with_ci(g["best"]), "best")) for g in glance],
            quality=quality_view(run_info),
            geometric_note=GEOMETRIC_NOTE,
            certified=None
            if certified is None
            else dict(certified, table=html_table(with_ci(certified["table"]), "certified")),
            summary=html_table(with_ci(tables.short), "summary"),
            adaptive=None
            if adaptive is None
            else {"title": ADAPTIVE_TITLE, "note": ADAPTIVE_NOTE, "table": html_table(with_ci(adaptive), "adaptive")},
            key_scores=html_table(key, "scores"),
            key_directions=key_directions(run_info, key),
            all_scores=html_table(means_only(tables.aggregated), "all-scores"),
            figure_sections=figure_sections,
            comparison=_json_for_script(data),
            n_examples=len(data["cells"]),
            failed_count=len(tables.failed),
            failed=html_table(tables.failed.head(MAX_FAILED_ROWS), "failed"),
            failed_shown=min(len(tables.failed), MAX_FAILED_ROWS),
            notes=_notes(files),
            verdict=verdict,
            robust_metrics=robust_metrics,
        )
    )
    return files.write(run_dir / "report.html", page.encode("utf-8"))


def _markdown_certified(section: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if section is None else dict(section, table=markdown_table(with_ci(section["table"])))


def write_markdown(
    run_dir: Path,
    run_info: dict[str, Any],
    tables: ReportTables,
    figures: ReportFigures,
    files: ReportFiles,
    df: pd.DataFrame | None = None,
    verdict: dict[str, Any] | None = None,
    verdict_ranking: pd.DataFrame | None = None,
) -> Path:
    """``report.md``: findings, rankings per metric, the summary and key scores; figures linked from ``figures/``."""
    df = df if df is not None else pd.DataFrame()
    adaptive = tables.adaptive
    key = key_scores(tables.formatted, run_info)
    page = (
        _environment("md")
        .get_template("report.md.j2")
        .render(
            run_name=run_dir.name,
            header=run_header(run_info),
            problems=dataset_problems(run_info, df),
            warnings=score_warnings(run_info.get("metrics", {}) or {}, df) + trained_warnings(df),
            findings=_findings_html(
                key_findings(tables.rankings, baselines=_baselines(df, run_info), run_info=run_info)
            ),
            rankings=[{"metric": m, "table": markdown_table(with_ci(t))} for m, t in tables.rankings.items()],
            ranking=markdown_table(with_ci(tables.ranking)) if len(tables.rankings) > 1 else None,
            summary=markdown_table(with_ci(tables.short)),
            glance=[
                dict(g, best=markdown_table(with_ci(g["best"])))
                for g in glance_sections(df, run_info, figures, data_uris=False)
            ],
            quality=quality_view(run_info),
            geometric_note=GEOMETRIC_NOTE,
            certified=_markdown_certified(certified_section(df, run_info, figures, data_uris=False)),
            adaptive=None
            if adaptive is None
            else {"title": ADAPTIVE_TITLE, "note": ADAPTIVE_NOTE, "table": markdown_table(with_ci(adaptive))},
            key_scores=markdown_table(key),
            key_directions=key_directions(run_info, key),
            figure_sections=_figure_sections(figures, tables.mos, data_uris=False),
            examples_name=None if figures.examples is None else figures.examples.name,
            failed_count=len(tables.failed),
            failed=markdown_table(tables.failed.head(MAX_FAILED_ROWS)),
            notes=_notes(files),
            verdict=verdict,
            robust_metrics=robust_metrics_view(df, run_info, verdict_ranking, "md"),
        )
    )
    return files.write(run_dir / "report.md", page.encode("utf-8"))
