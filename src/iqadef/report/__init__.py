"""Reports of a run: summary tables, the paper's figures, example images, defence ranking.

The flow of :func:`write_report`: load the results (:mod:`.files`: ``results.parquet`` or
``results.csv`` and ``run.json``) -> tables (:mod:`.tables`, pandas only; ``summary.csv``) -> figures
(:mod:`.figures`, matplotlib Agg; ``figures/*.png``) -> page (:mod:`.page`: ``report.html``, one offline
file, and ``report.md`` from the jinja2 templates in ``templates/``). Every file is written to a
temporary name and renamed and listed in the run folder's manifest (:class:`.files.ReportFiles`).
:func:`summary_table` is also the short table the runner prints at the end of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iqadef.analysis.verdict import study_rows, write_verdict
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.report.figures import ImageLocator, draw_figures, draw_tradeoffs, figure_file_name
from iqadef.report.files import ReportFiles, load_results
from iqadef.report.glance import quality_column, tradeoff_points, with_defence_plugins
from iqadef.report.page import ADAPTIVE_NOTE, ADAPTIVE_TITLE, NOTES, figure4_title, write_html, write_markdown
from iqadef.report.tables import (
    CLEAN_ROW,
    adaptive_table,
    binned_gain,
    example_rows,
    gain_matrix,
    has_adaptive,
    has_mos,
    key_findings,
    key_scores,
    markdown_table,
    ranking_table,
    report_tables,
    split_adaptive_label,
    srocc_matrix,
    summary_table,
    with_ci,
)
from iqadef.report.verdict_section import curve_figures, page_view, protocol_verdict

__all__ = [
    "ADAPTIVE_NOTE",
    "ADAPTIVE_TITLE",
    "CLEAN_ROW",
    "NOTES",
    "ImageLocator",
    "adaptive_table",
    "binned_gain",
    "example_rows",
    "figure4_title",
    "figure_file_name",
    "gain_matrix",
    "has_adaptive",
    "has_mos",
    "key_findings",
    "key_scores",
    "load_results",
    "markdown_table",
    "ranking_table",
    "split_adaptive_label",
    "srocc_matrix",
    "summary_table",
    "with_ci",
    "write_report",
]


@renamed_registry_keyword
def write_report(run_dir: str | Path, plugins: Any = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``summary.csv`` and ``figures/*.png`` into ``run_dir``.

    Returns the written files by key: ``html``, ``markdown``, ``summary_csv`` and ``figure:<stem>``
    for each figure.
    """
    run_dir = Path(run_dir)
    df, run_info = load_results(run_dir)
    run_info = with_defence_plugins(run_info, plugins)  # runs written before run.json recorded them
    files = ReportFiles(run_dir, background=True)  # figures rendered in child processes meanwhile
    result = protocol_verdict(df, run_info)  # a `protocol:` run: the worst-case verdict (docs/evaluation.md)
    df = study_rows(df, run_info)  # the study's tables: the run's own attacks (all rows without a protocol)
    tables = report_tables(df, run_info, plugins=plugins)
    written = {
        "summary_csv": files.write(run_dir / "summary.csv", tables.aggregated.to_csv(index=False).encode("utf-8"))
    }
    locate = ImageLocator(run_dir, run_info)
    figures = draw_figures(df, run_dir, tables.examples, tables.mos, files, locate, run_info)
    figures.tradeoff = draw_tradeoffs(
        {m: tradeoff_points(t, run_info) for m, t in tables.rankings.items()}, run_dir, files, quality_column(run_info)
    )
    written.update(figures.written())
    views: dict[str, Any] = {"html": None, "md": None}
    ranking = None if result is None else result.ranking  # the worst case beside fine-tuned metrics
    if result is not None:
        written.update(write_verdict(result, run_dir, files.write))
        curves = curve_figures(result, run_dir, files)
        written.update({f"figure:{path.stem}": path for _, path in curves})
        files.settle()  # the page embeds the figures
        views = {kind: page_view(result, curves, kind) for kind in views}
    files.settle()
    written["html"] = write_html(
        run_dir, run_info, tables, figures, files, df, locate, verdict=views["html"], verdict_ranking=ranking
    )
    written["markdown"] = write_markdown(
        run_dir, run_info, tables, figures, files, df, verdict=views["md"], verdict_ranking=ranking
    )
    return written
