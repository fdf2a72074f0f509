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
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iqadef.core import columns as score_columns
from iqadef.core.columns import ScoreColumn
from iqadef.report.certified import certified_curve, radius_defences, radius_grid
from iqadef.report.files import ReportFiles
from iqadef.report.glance import GEOMETRIC_MARK, quality_label
from iqadef.report.tables import CLEAN_ROW, binned_gain, gain_matrix, srocc_matrix

MAX_EXAMPLE_DEFENCES = 8
MAX_LINES = 8
THUMBNAIL_SIZE = 144
THUMBNAIL_QUALITY = 50


@dataclass
class ReportFigures:
    """The figure files of one report: (metric label, PNG path) per figure, in the order they are shown."""

    gain: list[tuple[str, Path]] = field(default_factory=list)  # Figure 3
    srocc: list[tuple[str, Path]] = field(default_factory=list)  # Figure 4
    bins: list[tuple[str, Path]] = field(default_factory=list)  # Figure 5
    certified: list[tuple[str, Path]] = field(default_factory=list)  # certified accuracy against radius
    tradeoff: list[tuple[str, Path]] = field(default_factory=list)  # gain against quality, Pareto front
    examples: Path | None = None

    def written(self) -> dict[str, Path]:
        """``figure:<stem>`` -> path, as :func:`~iqadef.report.write_report` returns them."""
        out = {
            f"figure:{path.stem}": path
            for _, path in (*self.gain, *self.srocc, *self.bins, *self.certified, *self.tradeoff)
        }
        if self.examples is not None:
            out[f"figure:{self.examples.stem}"] = self.examples
        return out


def draw_figures(
    df: pd.DataFrame,
    run_dir: Path,
    examples: pd.DataFrame,
    mos: bool,
    files: ReportFiles,
    locate: ImageLocator | None = None,
    run_info: dict[str, Any] | None = None,
) -> ReportFigures:
    """Figures 3 (gain), 4 (SROCC with MOS, else with f(x)) and 5 (binned gain) per metric, then the
    example images, written under ``run_dir/figures``. Figure 5 bins by the column ``run_info`` declares
    with the role ``attack_ssim`` (:mod:`iqadef.core.columns`); without one, by f(x_a) alone."""
    figures_dir = run_dir / "figures"
    visibility = score_columns.column_with_role(score_columns.read(run_info), "attack_ssim")
    drawn = ReportFigures()
    metrics = list(dict.fromkeys(df["metric"])) if "metric" in df.columns else []
    for metric in metrics:
        matrix = gain_matrix(df, metric)
        if not matrix.empty:
            drawn.gain.append(
                (
                    metric,
                    heatmap(
                        matrix,
                        f"Gain ({metric}): attacks × defences, lower is better",
                        "RdYlGn_r",
                        figures_dir / figure_file_name("gain_heatmap", metric),
                        files,
                    ),
                )
            )
        smatrix = same_columns(srocc_matrix(df, metric, "mos" if mos else "f_clean"), matrix)
        if not smatrix.empty:
            against = "MOS" if mos else "f(x), no MOS given"
            drawn.srocc.append(
                (
                    metric,
                    heatmap(
                        smatrix,
                        f"SROCC with {against} ({metric}) after defence",
                        "RdYlGn",
                        figures_dir / figure_file_name("srocc_heatmap", metric),
                        files,
                        vmin=-1,
                        vmax=1,
                    ),
                )
            )
        by_ssim = binned_gain(df, metric, visibility) if visibility is not None else pd.DataFrame()
        by_value = binned_gain(df, metric, "f_adv")
        if not (by_ssim.empty and by_value.empty):
            fig = new_figure(11, 4)
            _lines(fig.add_subplot(1, 2, 1), by_ssim, "SSIM(x, x_a) bin")
            _lines(fig.add_subplot(1, 2, 2), by_value, f"f(x_a) bin ({metric})")
            fig.suptitle(f"Gain against attack visibility and attacked score ({metric})", fontsize=10)
            drawn.bins.append((metric, save_figure(fig, figures_dir / figure_file_name("gain_bins", metric), files)))
        curves = draw_certified_curves(df, metric, figures_dir / figure_file_name("certified_radius", metric), files)
        if curves is not None:
            drawn.certified.append((metric, curves))
    drawn.examples = examples_figure(run_dir, examples, figures_dir / "examples.png", files, locate)
    return drawn


def new_figure(width: float, height: float):
    """A figure of ``width`` × ``height`` inches at 100 dpi with its own Agg canvas (no pyplot).

    No layout engine: constrained layout lays every figure out several times (most of the figures' time in
    a report); :func:`save_figure` crops the saved PNG to what was drawn instead, so no label is cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, files: ReportFiles) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """``fig`` as a PNG at ``path``, cropped to what was drawn; rendered in the background where ``files``
    renders so (:meth:`~iqadef.report.files.ReportFiles.write_rendered`)."""

    def render() -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.1)
        return buffer.getvalue()

    return files.write_rendered(path, render)


def heatmap(matrix: pd.DataFrame, title: str, cmap: str, path: Path, files: ReportFiles, vmin=None, vmax=None) -> Path:
    """``matrix`` as a coloured grid with each value written in its cell; a line above the clean row."""
    rows, cols = matrix.shape
    fig = new_figure(max(4.0, 1.0 + 0.9 * cols), max(2.5, 1.0 + 0.5 * rows))
    ax = fig.add_subplot()
    values = np.ma.masked_invalid(matrix.to_numpy(dtype=float))
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(cols), [str(c) for c in matrix.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in matrix.index], fontsize=8)
    size = cell_font_size(fig, rows, cols)
    for i in range(rows):
        for j in range(cols):
            v = matrix.iat[i, j]
            ax.text(
                j,
                i,
                "–" if not np.isfinite(v) else f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=size,
                color=text_colour(image.cmap(image.norm(v))) if np.isfinite(v) else "black",
            )
    if rows > 1 and matrix.index[-1] == CLEAN_ROW:
        ax.axhline(rows - 1.5, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_figure(fig, path, files)


def same_columns(matrix: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``matrix`` with its columns in ``reference``'s order (Figure 4 in Figure 3's defence order, so one
    column is one defence in both); columns ``reference`` lacks follow in their own order."""
    if matrix.empty or reference.empty:
        return matrix
    first = [c for c in reference.columns if c in matrix.columns]
    return matrix[first + [c for c in matrix.columns if c not in first]]


def cell_font_size(fig, rows: int, cols: int) -> float:  # noqa: ANN001 - a matplotlib Figure
    """A font size (points) at which "0.123" fits a heatmap cell: from the cell's width and height in points
    (the axes' share of the figure), between 5 and 10."""
    width, height = fig.get_size_inches()
    cell_w = width * 72 * 0.75 / max(cols, 1)  # the axes take about three quarters of the width
    cell_h = height * 72 * 0.7 / max(rows, 1)
    return float(np.clip(min(cell_w / 3.6, cell_h * 0.6), 5, 10))


def text_colour(rgba) -> str:  # noqa: ANN001 - a colour tuple
    """Black or white, whichever contrasts more with the cell's colour (WCAG relative luminance)."""
    channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def draw_tradeoff(
    points: pd.DataFrame, metric: str, path: Path, files: ReportFiles, quality: ScoreColumn
) -> Path | None:
    """Normalised gain (lower is better) against the declared quality column ``quality`` (its title, its
    better side; :func:`~.glance.quality_column`), one point per defence, the Pareto front of the
    non-geometric defences as a line; geometric defences hollow and marked, the no-defence baseline grey.
    None when no defence has both values. Drawn without constrained layout (``subplots_adjust``): one axes
    needs no layout engine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = points[
        np.isfinite(points["norm_gain"].to_numpy(dtype=float)) & np.isfinite(points["quality"].to_numpy(dtype=float))
    ]
    if finite.empty:
        return None
    fig = Figure(figsize=(6.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    middle = float(finite["quality"].min() + finite["quality"].max()) / 2
    ax.margins(x=0.08, y=0.1)
    front = finite[finite["pareto"]].sort_values("quality")
    if len(front):
        ax.plot(
            front["quality"],
            front["norm_gain"],
            color="C3",
            linewidth=1.2,
            zorder=1,
            label="Pareto front (no better defence on both)",
        )
    for k, row in enumerate(finite.sort_values("norm_gain").itertuples(index=False)):
        if row.baseline:
            style = {"marker": "X", "color": "grey", "s": 60}
        elif row.geometric:
            style = {"marker": "o", "facecolors": "none", "edgecolors": "C1", "s": 40}
        else:
            style = {"marker": "o", "color": "C3" if row.pareto else "C0", "s": 40}
        ax.scatter([row.quality], [row.norm_gain], zorder=2, **style)
        name = str(row.defence) if len(str(row.defence)) <= 28 else str(row.defence)[:27] + "…"
        name += GEOMETRIC_MARK if row.geometric else ""
        right = row.quality > middle  # label towards the inside, so it is not cut at the edge
        ax.annotate(
            name,
            (row.quality, row.norm_gain),
            textcoords="offset points",
            xytext=(-5 if right else 5, 3 if k % 2 == 0 else -9),
            ha="right" if right else "left",
            fontsize=7,
        )  # neighbours by gain alternate above and below, so close points stay readable
    ax.set_xlabel(f"{quality_label(quality)}  ({quality.direction} is better)", fontsize=8)
    ax.set_ylabel("normalised gain (lower is better)", fontsize=8)
    corner = "right" if quality.direction == "higher" else "left"
    ax.set_title(f"Gain against quality ({metric}): best defences at the bottom {corner}", fontsize=10)
    if finite["geometric"].any():
        ax.scatter(
            [],
            [],
            marker="o",
            facecolors="none",
            edgecolors="C1",
            label=f"{GEOMETRIC_MARK} moves pixels: its quality is not comparable",
        )
    if len(front) or finite["geometric"].any():
        ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path, files)


def draw_tradeoffs(
    tradeoffs: dict[str, pd.DataFrame], run_dir: Path, files: ReportFiles, quality: ScoreColumn | None
) -> list[tuple[str, Path]]:
    """:func:`draw_tradeoff` per metric (``tradeoffs``: metric -> :func:`~.glance.tradeoff_points`); none when
    the run declares no quality column (``quality`` None)."""
    drawn: list[tuple[str, Path]] = []
    if quality is None:
        return drawn
    for metric, points in tradeoffs.items():
        path = draw_tradeoff(points, metric, run_dir / "figures" / figure_file_name("tradeoff", metric), files, quality)
        if path is not None:
            drawn.append((metric, path))
    return drawn


def _lines(ax, table: pd.DataFrame, xlabel: str) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One line per defence (the MAX_LINES with the lowest mean gain) over the bins of ``table``."""
    if table.empty:
        ax.text(0.5, 0.5, f"no data for {xlabel}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    order = list(table.mean(axis=0).sort_values(kind="stable").index)[:MAX_LINES]
    shown = (
        f"all {len(order)} defences"
        if len(order) == table.shape[1]
        else f"the {len(order)} of {table.shape[1]} defences with the lowest mean gain"
    )
    x = np.arange(len(table.index))
    for defence in order:
        ax.plot(x, table[defence].to_numpy(dtype=float), marker="o", label=str(defence))
    ax.set_xticks(x, [str(i) for i in table.index], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("mean gain", fontsize=9)
    ax.legend(fontsize=7, title=shown, title_fontsize=7)


def draw_certified_curves(df: pd.DataFrame, metric: str, path: Path, files: ReportFiles) -> Path | None:
    """Certified accuracy (solid) and certified share (dashed) against the L2 radius, one colour per certified
    defence of ``metric``; None when no defence of ``metric`` certifies a radius."""
    defences = radius_defences(df, metric)
    if not defences:
        return None
    radii = radius_grid(df, metric)
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    for k, defence in enumerate(defences):
        curve = certified_curve(df, metric, defence, radii)
        colour = f"C{k % 10}"
        ax.plot(curve["radius"], curve["certified_accuracy"], color=colour, label=f"{defence}: certified accuracy")
        ax.plot(
            curve["radius"],
            curve["certified_share"],
            color=colour,
            linestyle="--",
            label=f"{defence}: certified (any bin)",
        )
    ax.set_xlabel("L2 radius r (images in [0, 1])", fontsize=9)
    ax.set_ylabel("share of clean images", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Certified accuracy against radius ({metric}): bin of f(x) kept within r", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path, files)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "metric"


def figure_file_name(kind: str, label: str) -> str:
    """``KIND_<slug>-<hash>.png``: readable, and unique per exact label (``a b.pt`` and ``a_b.pt`` share a
    slug, never a hash); the slug is cut to 60 characters so long labels stay valid file names."""
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:10]
    return f"{kind}_{_slug(label)[:60]}-{digest}.png"


class ImageLocator:
    """Finds the image files a result table names.

    ``adv_path`` and ``example_path`` are relative to the run folder. ``image_path`` is the dataset file as
    the run saw it: absolute, or, when ``dataset.images`` was a relative path, relative to the folder the
    run was started from, which the report does not know. Such a path is looked up in the dataset folder
    as the registry names it (``run.json``: the registry file's folder + ``dataset.images`` + the image's
    name), then from the current folder, then from the run folder.
    """

    def __init__(self, run_dir: Path, run_info: dict | None = None):
        self.run_dir = run_dir
        self.dataset_dir: Path | None = None
        info = run_info or {}
        raw = (info.get("registry") or {}).get("dataset") or {}
        raw = raw.get("images") if isinstance(raw, dict) else raw
        source = info.get("registry_file")
        if isinstance(raw, str) and raw and raw != "builtin" and isinstance(source, str) and source:
            self.dataset_dir = Path(source).parent / Path(raw).expanduser()
        elif isinstance((info.get("dataset") or {}).get("images"), str):
            self.dataset_dir = Path(info["dataset"]["images"])

    def find(self, value: str, column: str = "adv_path", image: str = "") -> Path | None:
        """The file ``value`` of ``column`` names, if it exists (``image``: the row's image name)."""
        if not value:
            return None
        path = Path(value)
        if path.is_absolute():
            candidates = [path]
        elif column == "image_path":
            candidates = [self.dataset_dir / image] if self.dataset_dir is not None and image else []
            candidates += [Path.cwd() / path, self.run_dir / path]
        else:
            candidates = [self.run_dir / path]
        return next((c for c in candidates if c.is_file()), None)


def resolve_image(run_dir: Path, value: str) -> Path | None:
    """An image path of the result table (relative to the run folder, or absolute), if the file exists."""
    return ImageLocator(run_dir).find(value)


def examples_figure(
    run_dir: Path, examples: pd.DataFrame, path: Path, files: ReportFiles, locate: ImageLocator | None = None
) -> Path | None:
    """The first example image: clean, attacked, and D(x_a) for up to MAX_EXAMPLE_DEFENCES defences."""
    locate = locate or ImageLocator(run_dir)
    if examples.empty:
        return None
    first = examples.iloc[0]
    pick = examples[
        (examples["image"] == first["image"])
        & (examples["metric"] == first["metric"])
        & (examples["attack"] == first["attack"])
    ].drop_duplicates("defence")
    pick = pick.head(MAX_EXAMPLE_DEFENCES)
    panels = [
        ("clean", locate.find(str(first.get("image_path", "")), "image_path", str(first["image"]))),
        (f"attacked ({first['attack']})", locate.find(str(first.get("adv_path", "")))),
    ]
    panels += [(f"D(x_a): {row['defence']}", locate.find(str(row["example_path"]))) for _, row in pick.iterrows()]
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


def png_data_uri(path: Path, colours: int | None = 256) -> str:
    """The PNG file as a ``data:`` URI (base64: no character that HTML would need escaped).

    With ``colours``, the embedded copy is a palette PNG of that many colours: a plot has few, and the
    page's figures shrink to a third (the file in ``figures/`` stays as drawn).
    """
    data = path.read_bytes()
    if colours:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            buffer = io.BytesIO()
            im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(
                buffer, format="PNG", optimize=True
            )
        data = buffer.getvalue() if buffer.tell() < len(data) else data
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_data_uri(
    path: Path | None, files: ReportFiles, size: int = THUMBNAIL_SIZE, cache: ThumbnailCache | None = None
) -> str:
    """A ``size``-pixel thumbnail of ``path`` as a ``data:`` URI (WebP, else JPEG); "" when unreadable.

    Lossy and small on purpose: a few KB per image is what lets the page carry every example of the
    default run (hundreds) and stay near 2 MB; the full-size PNGs stay in the run folder. With ``cache``, a
    file whose bytes were thumbnailed before (by an earlier report) is not decoded again.
    """
    if cache is not None and path is not None:
        return cache.get(path, size, lambda: thumbnail_data_uri(path, files, size))
    from PIL import features

    image = files.image(path, size=size) if path is not None else None
    if image is None:
        return ""
    kind = "WEBP" if features.check("webp") else "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=kind, quality=THUMBNAIL_QUALITY)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ThumbnailCache:
    """The example thumbnails of earlier reports, by the SHA-256 of the image file's bytes (with the size,
    format and quality): a report written again (after a resumed run, or to change nothing) decodes only
    the images that are new or changed. Kept in ``cache/report-thumbnails.json`` of the run folder, with
    the entries the last report used; a file that cannot be read is never cached (it is warned about)."""

    FILE = Path("cache") / "report-thumbnails.json"

    def __init__(self, run_dir: Path, files: ReportFiles):
        self.path = run_dir / self.FILE
        self.files = files
        self.lock = threading.Lock()
        self.old: dict[str, str] = {}
        self.used: dict[str, str] = {}
        self.hits = self.misses = 0
        from PIL import features

        self.format = "WEBP" if features.check("webp") else "JPEG"  # as thumbnail_data_uri picks it
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and loaded.get("version") == 1 and isinstance(loaded.get("thumbnails"), dict):
                self.old = {k: v for k, v in loaded["thumbnails"].items() if isinstance(v, str) and v}
        except (OSError, ValueError):
            pass  # no cache yet, or a damaged one: every thumbnail is made anew

    def key(self, path: Path, size: int) -> str | None:
        """The cache key of ``path``'s content, or None when it cannot be read (made and warned the usual way)."""
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        return f"{digest}:{size}:{self.format}:{THUMBNAIL_QUALITY}"

    def get(self, path: Path, size: int, make) -> str:  # noqa: ANN001 - make: () -> str
        key = self.key(path, size)
        if key is not None and key in self.old:
            with self.lock:
                self.hits += 1
                self.used[key] = self.old[key]
            return self.old[key]
        uri = make()
        with self.lock:
            self.misses += 1
            if key is not None and uri:
                self.used[key] = uri
        return uri

    def save(self) -> None:
        """Write the entries this report used (when they differ from what the file holds)."""
        if self.used == self.old:
            return
        blob = json.dumps({"version": 1, "thumbnails": self.used}, sort_keys=True, separators=(",", ":"))
        self.files.write(self.path, blob.encode("utf-8"))
