"""``report.html`` (self-contained) and ``report.md`` from the jinja2 templates in ``templates/``.

The HTML environment autoescapes every value. Plain strings are escaped by the standard library's
``html.escape`` (quotes as ``&quot;``/``&#x27;``), as the page was escaped before it came from templates,
rather than by markupsafe's ``&#34;``/``&#39;``: the page stays byte-identical. Only the tables pass as
:class:`~markupsafe.Markup`, built here by pandas' ``to_html`` with its escaping on. The markdown
environment escapes nothing: labels appear there as they are.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from ..scores import CONFIDENCE
from .figures import ReportFigures, png_data_uri, resolve_image, thumbnail_data_uri
from .files import ReportFiles
from .tables import ReportTables, fmt, key_scores, markdown_table, with_ci

TEMPLATES = Path(__file__).parent / "templates"
MAX_GALLERY_ROWS = 24
MAX_FAILED_ROWS = 200

ADAPTIVE_TITLE = "Adaptive attacks: gain without and with attacking through the defence"
ADAPTIVE_NOTE = ("Each adaptive attack `X@mode` attacks f(D(x)) through the defence (BPDA for non-differentiable "
                 "defences, EOT over randomised ones) and is paired with its non-adaptive twin `X` on the same "
                 "images. gain_difference = adaptive − non-adaptive gain, with a 95% CI of the paired per-image "
                 "difference; a clearly positive difference means the defence's gain under the non-adaptive "
                 "attack overstates its robustness (obfuscated gradients, Athalye et al. 2018). rise = "
                 "(f(D(x_a)) − f(D(x))) / metric range, signed so that positive is the attacker's direction: "
                 "unlike the gain it does not count a defence's own change of the score as the attack's.")

NOTES = [
    f"Confidence intervals: two-sided {int(CONFIDENCE * 100)}% Student-t interval of the mean over images "
    "(as the MSU robustness benchmark); SROCC intervals by the Fisher z-transform with variance 1.06/(n-3).",
    "Gain = |f(x) - f(D(x_a))| / f(x) (lower is better); the 'clean' row is |f(x) - f(D(x))| / f(x).",
    "PSNR uses data range 1; identical images give +inf (scikit-image, as the reference), which means leave "
    "out and count in the column's _n_inf.",
    "Defended images compared with x or x_a are first resized to x's size (bilinear, as the reference).",
    "Failed cells are excluded from every score and counted in n_failed.",
]


def figure4_title(mos: bool) -> str:
    if mos:
        return "Figure 4: SROCC with MOS"
    return ("Figure 4: SROCC with the clean scores f(x) (no MOS file was given: how well each defence keeps "
            "the metric's own ranking of the images)")


def run_header(run_info: dict[str, Any]) -> list[str]:
    """The lines under the title: seed, images, MOS file, and each metric's range and direction."""
    dataset = run_info.get("dataset", {}) or {}
    lines = [f"seed: {run_info.get('seed', '?')}", f"images: {dataset.get('images', '?')}",
             f"MOS: {dataset.get('mos') or 'none'}"]
    for label, m in (run_info.get("metrics", {}) or {}).items():
        lines.append(f"metric {label}: range {m.get('range')}, "
                     f"{'higher' if m.get('higher_is_better', True) else 'lower'} is better")
    return lines


def _escape_as_html_escape(value: Any) -> Any:
    """The HTML environment's ``finalize``: a plain value escaped by ``html.escape`` (autoescaping then
    leaves the Markup alone); Markup passes as it is."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


@lru_cache(maxsize=None)
def _environment(kind: str) -> jinja2.Environment:
    """``html``: autoescaping; ``md``: none. Block tags on their own lines leave no blank lines."""
    options: dict[str, Any] = {"loader": jinja2.FileSystemLoader(TEMPLATES), "undefined": jinja2.StrictUndefined,
                               "trim_blocks": True, "lstrip_blocks": True, "keep_trailing_newline": False}
    if kind == "html":
        return jinja2.Environment(autoescape=True, finalize=_escape_as_html_escape, **options)
    return jinja2.Environment(autoescape=False, **options)


def html_table(table: pd.DataFrame, css_class: str) -> Markup:
    """``table`` as HTML in a scrolling box; pandas escapes every cell and header (``escape=True``)."""
    if table.empty:
        return Markup("<p><em>(empty)</em></p>")
    return Markup('<div class="scroll">' + table.to_html(index=False, classes=css_class, border=0, escape=True,
                                                         float_format=lambda v: fmt(v), na_rep="–")
                  + "</div>")


def _figure_sections(figures: ReportFigures, mos: bool, data_uris: bool) -> list[dict[str, Any]]:
    """Figures 3-5: title, the text shown when a section has no figure, and each figure's label and file."""
    sections = [("Figure 3: gain heatmap", figures.gain, "no successful cells"),
                (figure4_title(mos), figures.srocc, "not enough images for SROCC"),
                ("Figure 5: gain against SSIM(x, x_a) and attacked metric value", figures.bins, "no data")]
    return [{"title": title, "empty": empty,
             "figures": [{"label": label, "name": path.name, "uri": png_data_uri(path) if data_uris else None}
                       for label, path in items]}
            for title, items, empty in sections]


def _notes(files: ReportFiles) -> list[str]:
    extra = files.unreadable_note()
    return list(NOTES) + ([extra] if extra else [])


def write_html(run_dir: Path, run_info: dict[str, Any], tables: ReportTables, figures: ReportFigures,
               files: ReportFiles) -> Path:
    """``report.html``: every table, the figures and example thumbnails embedded as data URIs."""
    gallery = []
    if figures.examples is not None:
        for _, row in tables.examples.head(MAX_GALLERY_ROWS).iterrows():
            thumbnails = [thumbnail_data_uri(resolve_image(run_dir, str(row.get(key, ""))), files)
                          for key in ("image_path", "adv_path", "example_path")]
            gallery.append({"caption": [str(row[c]) for c in ("image", "metric", "attack", "defence")],
                            "thumbnails": thumbnails})
    adaptive = tables.adaptive
    page = _environment("html").get_template("report.html.j2").render(
        run_name=run_dir.name, header=run_header(run_info),
        summary=html_table(with_ci(tables.short), "summary"), ranking=html_table(tables.ranking, "ranking"),
        adaptive=None if adaptive is None else {"title": ADAPTIVE_TITLE, "note": ADAPTIVE_NOTE,
                                                "table": html_table(with_ci(adaptive), "adaptive")},
        key_scores=html_table(key_scores(tables.formatted), "scores"),
        all_scores=html_table(tables.formatted, "all-scores"),
        figure_sections=_figure_sections(figures, tables.mos, data_uris=True),
        examples_uri=None if figures.examples is None else png_data_uri(figures.examples), gallery=gallery,
        failed_count=len(tables.failed), failed=html_table(tables.failed.head(MAX_FAILED_ROWS), "failed"),
        notes=_notes(files))
    return files.write(run_dir / "report.html", page.encode("utf-8"))


def write_markdown(run_dir: Path, run_info: dict[str, Any], tables: ReportTables, figures: ReportFigures,
                   files: ReportFiles) -> Path:
    """``report.md``: the summary, ranking and key scores; figures linked from ``figures/``."""
    adaptive = tables.adaptive
    page = _environment("md").get_template("report.md.j2").render(
        run_name=run_dir.name, header=run_header(run_info),
        summary=markdown_table(with_ci(tables.short)), ranking=markdown_table(tables.ranking),
        adaptive=None if adaptive is None else {"title": ADAPTIVE_TITLE, "note": ADAPTIVE_NOTE,
                                                "table": markdown_table(with_ci(adaptive))},
        key_scores=markdown_table(key_scores(tables.formatted)),
        figure_sections=_figure_sections(figures, tables.mos, data_uris=False),
        examples_name=None if figures.examples is None else figures.examples.name,
        failed_count=len(tables.failed), failed=markdown_table(tables.failed.head(MAX_FAILED_ROWS)),
        notes=_notes(files))
    return files.write(run_dir / "report.md", page.encode("utf-8"))
