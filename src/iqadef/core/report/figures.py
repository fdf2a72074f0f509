"""The report's figures: the paper's Figures 3-5 per metric and the example images, as PNG files.

Drawn on matplotlib ``Figure`` objects with the Agg renderer, never pyplot, so reports work headless and
leave the global backend alone. Figure names carry a hash of the metric label (:func:`figure_file_name`),
so labels that differ only in characters a file name cannot hold never share a file. The page embeds the
PNGs and small thumbnails of the example images as data URIs (:func:`png_data_uri`,
:func:`thumbnail_data_uri`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .files import ReportFiles
from .tables import CLEAN_ROW, binned_gain, gain_matrix, srocc_matrix

MAX_EXAMPLE_DEFENCES = 8
MAX_LINES = 8
THUMBNAIL_SIZE = 160


@dataclass
class ReportFigures:
    """The figure files of one report: (metric label, PNG path) per figure, in the order they are shown."""

    gain: list[tuple[str, Path]] = field(default_factory=list)  # Figure 3
    srocc: list[tuple[str, Path]] = field(default_factory=list)  # Figure 4
    bins: list[tuple[str, Path]] = field(default_factory=list)  # Figure 5
    examples: Path | None = None

    def written(self) -> dict[str, Path]:
        """``figure:<stem>`` -> path, as :func:`~iqadef.core.report.write_report` returns them."""
        out = {f"figure:{path.stem}": path for _, path in (*self.gain, *self.srocc, *self.bins)}
        if self.examples is not None:
            out[f"figure:{self.examples.stem}"] = self.examples
        return out


def draw_figures(df: pd.DataFrame, run_dir: Path, examples: pd.DataFrame, mos: bool,
                 files: ReportFiles) -> ReportFigures:
    """Figures 3 (gain), 4 (SROCC with MOS, else with f(x)) and 5 (binned gain) per metric, then the
    example images, written under ``run_dir/figures``."""
    figures_dir = run_dir / "figures"
    drawn = ReportFigures()
    metrics = list(dict.fromkeys(df["metric"])) if "metric" in df.columns else []
    for metric in metrics:
        matrix = gain_matrix(df, metric)
        if not matrix.empty:
            drawn.gain.append((metric, heatmap(matrix, f"Gain ({metric}): attacks × defences, lower is better",
                                               "RdYlGn_r", figures_dir / figure_file_name("gain_heatmap", metric),
                                               files)))
        smatrix = srocc_matrix(df, metric, "mos" if mos else "f_clean")
        if not smatrix.empty:
            against = "MOS" if mos else "f(x), no MOS given"
            drawn.srocc.append((metric, heatmap(smatrix, f"SROCC with {against} ({metric}) after defence", "RdYlGn",
                                                figures_dir / figure_file_name("srocc_heatmap", metric), files,
                                                vmin=-1, vmax=1)))
        by_ssim = binned_gain(df, metric, "ssim_x_xa")
        by_value = binned_gain(df, metric, "f_adv")
        if not (by_ssim.empty and by_value.empty):
            fig = new_figure(11, 4)
            _lines(fig.add_subplot(1, 2, 1), by_ssim, "SSIM(x, x_a) bin")
            _lines(fig.add_subplot(1, 2, 2), by_value, f"f(x_a) bin ({metric})")
            fig.suptitle(f"Gain against attack visibility and attacked score ({metric})", fontsize=10)
            drawn.bins.append((metric, save_figure(fig, figures_dir / figure_file_name("gain_bins", metric), files)))
    drawn.examples = examples_figure(run_dir, examples, figures_dir / "examples.png", files)
    return drawn


def new_figure(width: float, height: float):
    """A figure of ``width`` × ``height`` inches at 100 dpi with its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, files: ReportFiles) -> Path:  # noqa: ANN001 - a matplotlib Figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return files.write(path, buffer.getvalue())


def heatmap(matrix: pd.DataFrame, title: str, cmap: str, path: Path, files: ReportFiles, vmin=None,
            vmax=None) -> Path:
    """``matrix`` as a coloured grid with each value written in its cell; a line above the clean row."""
    rows, cols = matrix.shape
    fig = new_figure(max(4.0, 1.0 + 0.9 * cols), max(2.5, 1.0 + 0.5 * rows))
    ax = fig.add_subplot()
    values = np.ma.masked_invalid(matrix.to_numpy(dtype=float))
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(cols), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in matrix.index], fontsize=8)
    for i in range(rows):
        for j in range(cols):
            v = matrix.iat[i, j]
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=7)
    if rows > 1 and matrix.index[-1] == CLEAN_ROW:
        ax.axhline(rows - 1.5, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_figure(fig, path, files)


def _lines(ax, table: pd.DataFrame, xlabel: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One line per defence (the MAX_LINES with the lowest mean gain) over the bins of ``table``."""
    if table.empty:
        ax.text(0.5, 0.5, f"no data for {xlabel}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    order = list(table.mean(axis=0).sort_values(kind="stable").index)[:MAX_LINES]
    x = np.arange(len(table.index))
    for defence in order:
        ax.plot(x, table[defence].to_numpy(dtype=float), marker="o", label=str(defence))
    ax.set_xticks(x, [str(i) for i in table.index], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("mean gain", fontsize=9)
    ax.legend(fontsize=7)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"


def figure_file_name(kind: str, label: str) -> str:
    """``KIND_<slug>-<hash>.png``: readable, and unique per exact label (``a b.pt`` and ``a_b.pt`` share a
    slug, never a hash); the slug is cut to 60 characters so long labels stay valid file names."""
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:10]
    return f"{kind}_{_slug(label)[:60]}-{digest}.png"


def resolve_image(run_dir: Path, value: str) -> Path | None:
    """An image path of the result table (relative to the run folder, or absolute), if the file exists."""
    if not value:
        return None
    path = Path(value)
    path = path if path.is_absolute() else run_dir / path
    return path if path.exists() else None


def examples_figure(run_dir: Path, examples: pd.DataFrame, path: Path, files: ReportFiles) -> Path | None:
    """The first example image: clean, attacked, and D(x_a) for up to MAX_EXAMPLE_DEFENCES defences."""
    if examples.empty:
        return None
    first = examples.iloc[0]
    pick = examples[(examples["image"] == first["image"]) & (examples["metric"] == first["metric"])
                    & (examples["attack"] == first["attack"])].drop_duplicates("defence")
    pick = pick.head(MAX_EXAMPLE_DEFENCES)
    panels = [("clean", resolve_image(run_dir, str(first.get("image_path", "")))),
              (f"attacked ({first['attack']})", resolve_image(run_dir, str(first.get("adv_path", ""))))]
    panels += [(f"D(x_a): {row['defence']}", resolve_image(run_dir, str(row["example_path"])))
               for _, row in pick.iterrows()]
    fig = new_figure(2.2 * len(panels), 2.6)
    for k, (title, file) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        image = files.image(file) if file is not None else None
        if image is None:
            ax.text(0.5, 0.5, "missing" if file is None else "unreadable", ha="center", va="center")
        else:
            ax.imshow(image)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{first['image']} — metric {first['metric']}", fontsize=9)
    return save_figure(fig, path, files)


def png_data_uri(path: Path) -> str:
    """The PNG file as a ``data:`` URI (base64: no character that HTML would need escaped)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def thumbnail_data_uri(path: Path | None, files: ReportFiles) -> str:
    """A THUMBNAIL_SIZE-pixel PNG thumbnail of ``path`` as a ``data:`` URI; "" when it cannot be read."""
    image = files.image(path, size=THUMBNAIL_SIZE) if path is not None else None
    if image is None:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
