"""Reports of a run: summary tables, the paper's figures, example images, defence ranking.

Entry points: :func:`summary_table` (the short table printed at the end of a run) and
:func:`write_report` (``report.html``, self-contained, and ``report.md`` plus ``figures/*.png`` and
``summary.csv`` in the run directory). Figures are drawn with matplotlib ``Figure`` objects and the
Agg renderer, never pyplot, so reports work headless and leave the global backend alone.

Every file is written to a temporary name and renamed (a full disk leaves the previous report whole and
says so), and listed in the run folder's manifest (:mod:`iqadef.core.rundir`). Figure names carry a hash
of the metric label (:func:`figure_file_name`), so labels that differ only in characters a file name
cannot hold never share a file. An image that cannot be read (a truncated example) is shown as missing
and named in the notes; the report is still written.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .errors import ConfigError, IqadefError
from .rundir import RunFolder
from .scores import CONFIDENCE, GROUP_COLUMNS, aggregate, mean_ci, metric_info, metric_span, ok_rows
from .store import StorageWarning, atomic_write_bytes

CLEAN_ROW = "clean"
MAX_EXAMPLE_DEFENCES = 8
MAX_GALLERY_ROWS = 24
MAX_LINES = 8
N_BINS = 5


# -- loading -------------------------------------------------------------------------------------
def load_results(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The result table (``results.parquet``, else ``results.csv``) and ``run.json`` of a run."""
    run_dir = Path(run_dir)
    parquet, csv = run_dir / "results.parquet", run_dir / "results.csv"
    table = parquet if parquet.exists() else csv if csv.exists() else None
    if table is None:
        raise ConfigError(f"{run_dir}: no results.parquet or results.csv; is this a run directory?")
    try:
        if table == parquet:
            df = pd.read_parquet(parquet)
        else:
            df = pd.read_csv(csv, keep_default_na=False, na_values=["", "NaN", "nan"])
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise IqadefError(f"{table}: cannot be read ({_first_line(exc)}); run the registry again to export it "
                          f"anew from results.sqlite") from None
    info_path = run_dir / "run.json"
    try:
        run_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    except (OSError, ValueError) as exc:
        raise IqadefError(f"{info_path}: cannot be read ({_first_line(exc)}); run the registry again to write "
                          f"it anew") from None
    for col in ("image", "metric", "attack", "defence", "status", "error", "adv_path", "example_path",
                "image_path"):
        if col in df.columns:
            df[col] = [("" if pd.isna(v) else str(v)) for v in df[col]]
    return df, run_info


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the short table -----------------------------------------------------------------------------
def _gain(f_ref: pd.Series, f_other: pd.Series) -> np.ndarray:
    ref = f_ref.to_numpy(dtype=float)
    other = f_other.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(ref - other) / ref
    out[ref == 0] = np.nan
    return out


def summary_table(df: pd.DataFrame, run_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """Mean gain |f(x) - f(D(x_a))| / f(x) with its 95% CI per metric × attack × defence.

    Columns: metric, attack, defence, n_images, n_failed, gain, gain_ci_low, gain_ci_high, and
    quality_score when the table has it. Failed cells are excluded and counted.
    """
    rows = []
    for keys, group in df.groupby(list(GROUP_COLUMNS), sort=False, dropna=False):
        good = ok_rows(group)
        row = dict(zip(GROUP_COLUMNS, keys))
        row["n_images"], row["n_failed"] = int(len(good)), int(len(group) - len(good))
        gains = _gain(good["f_clean"], good["f_def_adv"]) if len(good) else np.array([])
        row["gain"], row["gain_ci_low"], row["gain_ci_high"], _ = mean_ci(gains)
        if "quality_score" in good.columns:
            row["quality_score"] = mean_ci(good["quality_score"].to_numpy(dtype=float))[0]
        rows.append(row)
    columns = list(GROUP_COLUMNS) + ["n_images", "n_failed", "gain", "gain_ci_low", "gain_ci_high"]
    out = pd.DataFrame(rows, columns=columns + (["quality_score"] if "quality_score" in df.columns else []))
    return out


# -- adaptive attacks (BPDA / EOT) ---------------------------------------------------------------
ADAPTIVE_LABEL = re.compile(r"^(?P<twin>.+)@(?P<mode>bpda\+eot|bpda|eot)(?P<extra>,eot=\d+)?$")
ADAPTIVE_COLUMNS = ("metric", "defence", "attack", "adaptive", "n_images", "gain_non_adaptive",
                    "gain_adaptive", "gain_difference", "gain_difference_ci_low", "gain_difference_ci_high",
                    "rise_non_adaptive", "rise_adaptive", "rise_difference", "rise_difference_ci_low",
                    "rise_difference_ci_high")
ADAPTIVE_NOTE = ("Each adaptive attack `X@mode` attacks f(D(x)) through the defence (BPDA for non-differentiable "
                 "defences, EOT over randomised ones) and is paired with its non-adaptive twin `X` on the same "
                 "images. gain_difference = adaptive − non-adaptive gain, with a 95% CI of the paired per-image "
                 "difference; a clearly positive difference means the defence's gain under the non-adaptive "
                 "attack overstates its robustness (obfuscated gradients, Athalye et al. 2018). rise = "
                 "(f(D(x_a)) − f(D(x))) / metric range, signed so that positive is the attacker's direction: "
                 "unlike the gain it does not count a defence's own change of the score as the attack's.")


def split_adaptive_label(label: str) -> tuple[str, str] | None:
    """``("X", "bpda+eot,eot=8")`` for an adaptive attack label ``X@bpda+eot,eot=8``; None otherwise."""
    found = ADAPTIVE_LABEL.match(str(label))
    if found is None:
        return None
    return found["twin"], found["mode"] + (found["extra"] or "")


def has_adaptive(df: pd.DataFrame) -> bool:
    """Whether the result table has rows of an adaptive attack."""
    if "adaptive" in df.columns:
        modes = df["adaptive"].fillna("none").astype(str)
        return bool((~modes.isin(["none", ""])).any())
    return "attack" in df.columns and any(split_adaptive_label(a) for a in df["attack"].unique())


def _run_order(values: pd.Series, configured: Any) -> list[str]:
    """The distinct ``values`` in the registry's order (``run.json``), the others after them."""
    present = list(dict.fromkeys(values))
    first = [v for v in (configured or []) if v in present]
    return first + [v for v in present if v not in first]


def adaptive_table(df: pd.DataFrame, run_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per metric × defence: mean gain under each adaptive attack and under its non-adaptive twin.

    An adaptive attack's label is ``X@mode`` (``AttackEntry.label``); its twin is the attack labelled
    ``X`` in the same run. Both gains are means over the images where both cells succeeded; the
    difference (adaptive − non-adaptive) comes with the 95% Student-t CI of the paired per-image
    differences. ``rise_*`` do the same for the signed, range-normalised move of the defended score,
    ``±(f(D(x_a)) - f(D(x))) / span`` (positive = towards "better", what the attacker wants). Without a
    twin in the run, the non-adaptive values and the differences are NaN and the adaptive ones are over
    all its successful images. Empty (with the columns) when the run has no
    adaptive attack. Rows follow the registry's order of metrics, attacks and defences (``run_info``).
    """
    rows = []
    if not len(df) or not {"attack", "defence", "metric", "image"} <= set(df.columns):
        return pd.DataFrame(columns=list(ADAPTIVE_COLUMNS))
    good = ok_rows(df).copy()
    good["_gain"] = _gain(good["f_clean"], good["f_def_adv"])
    sign = good["metric"].map(lambda m: 1.0 if metric_info(run_info, m)["higher_is_better"] else -1.0)
    span = good["metric"].map(lambda m: metric_span(metric_info(run_info, m)))
    good["_rise"] = sign * (good["f_def_adv"].astype(float) - good["f_def_clean"].astype(float)) / span
    attacks = _run_order(df["attack"], (run_info or {}).get("attacks"))
    defences = _run_order(df["defence"], (run_info or {}).get("defences"))
    for metric in _run_order(df["metric"], list((run_info or {}).get("metrics", {}) or {})):
        mine = good[good["metric"] == metric]
        for attack in attacks:
            split = split_adaptive_label(attack)
            if split is None:
                continue
            twin, mode = split
            for defence in defences:
                cell = mine[(mine["attack"] == attack) & (mine["defence"] == defence)]
                if not len(df[(df["metric"] == metric) & (df["attack"] == attack) & (df["defence"] == defence)]):
                    continue
                adaptive = cell.drop_duplicates("image").set_index("image")[["_gain", "_rise"]]
                plain = mine[(mine["attack"] == twin) & (mine["defence"] == defence)]
                plain = plain.drop_duplicates("image").set_index("image")[["_gain", "_rise"]]
                row: dict[str, Any] = {"metric": metric, "defence": defence, "attack": twin, "adaptive": mode}
                common = adaptive.index.intersection(plain.index) if twin in attacks else adaptive.index
                row["n_images"] = int(len(common))
                for measure in ("gain", "rise"):
                    a = adaptive.loc[common, f"_{measure}"].to_numpy(float)
                    row[f"{measure}_adaptive"] = mean_ci(a)[0]
                    if twin in attacks:
                        p = plain.loc[common, f"_{measure}"].to_numpy(float)
                        diff, low, high, _ = mean_ci(a - p)
                        row[f"{measure}_non_adaptive"] = mean_ci(p)[0]
                    else:
                        diff = low = high = row[f"{measure}_non_adaptive"] = math.nan
                    row.update({f"{measure}_difference": diff, f"{measure}_difference_ci_low": low,
                                f"{measure}_difference_ci_high": high})
                rows.append(row)
    return pd.DataFrame(rows, columns=list(ADAPTIVE_COLUMNS))


# -- per-metric matrices for the figures ---------------------------------------------------------
def _defence_order(matrix: pd.DataFrame) -> list[str]:
    return list(matrix.mean(axis=0, skipna=True).sort_values(kind="stable").index)


def gain_matrix(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean gain, attacks × defences (defences sorted by mean gain), plus the clean-image row."""
    good = ok_rows(df[df["metric"] == metric]).copy()
    if good.empty:
        return pd.DataFrame()
    good["_gain"] = _gain(good["f_clean"], good["f_def_adv"])
    good["_gain_clean"] = _gain(good["f_clean"], good["f_def_clean"])
    matrix = good.pivot_table(index="attack", columns="defence", values="_gain", aggfunc="mean",
                              sort=False, dropna=False)
    # D(x) does not depend on the attack: one value per image and defence.
    clean = good.drop_duplicates(["image", "defence"]).groupby("defence", sort=False)["_gain_clean"].mean()
    matrix.loc[CLEAN_ROW] = clean.reindex(matrix.columns)
    order = _defence_order(matrix.drop(index=CLEAN_ROW))
    return matrix[order]


def _spearman(a: pd.Series, b: pd.Series) -> float:
    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a[keep], b[keep])[0])


def has_mos(df: pd.DataFrame) -> bool:
    return "mos" in df.columns and bool(np.isfinite(pd.to_numeric(df["mos"], errors="coerce")).any())


def figure4_title(mos: bool) -> str:
    if mos:
        return "Figure 4: SROCC with MOS"
    return ("Figure 4: SROCC with the clean scores f(x) (no MOS file was given: how well each defence keeps "
            "the metric's own ranking of the images)")


def srocc_matrix(df: pd.DataFrame, metric: str, reference: str = "mos") -> pd.DataFrame:
    """SROCC(reference, f(D(x_a))), attacks × defences, plus the clean row SROCC(reference, f(D(x))).

    ``reference`` is ``mos`` (the paper's Figure 4) or ``f_clean``: without MOS, the metric's own
    ranking of the clean images is what a defence should keep (SROCC 1: the order is untouched).
    """
    good = ok_rows(df[df["metric"] == metric])
    if good.empty or (reference == "mos" and not has_mos(good)):
        return pd.DataFrame()
    cells = {(a, d): _spearman(g[reference], g["f_def_adv"])
             for (a, d), g in good.groupby(["attack", "defence"], sort=False)}
    matrix = pd.Series(cells).unstack()
    attacks = list(dict.fromkeys(good["attack"]))
    defences = list(dict.fromkeys(good["defence"]))
    matrix = matrix.reindex(index=attacks, columns=defences)
    unique = good.drop_duplicates(["image", "defence"])
    matrix.loc[CLEAN_ROW] = [_spearman(g[reference], g["f_def_clean"]) if len(g) else math.nan
                             for g in (unique[unique["defence"] == d] for d in defences)]
    order = list(matrix.drop(index=CLEAN_ROW).mean(axis=0).sort_values(ascending=False, kind="stable").index)
    return matrix[order]


def ranking_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Defences ranked by mean gain over all metric × attack groups (lower = better purification)."""
    if agg.empty:
        return pd.DataFrame(columns=["rank", "defence", "gain", "quality_score", "similarity_score"])
    source = agg if "gain_mean" in agg.columns else agg.assign(gain_mean=np.nan)
    cols = {"gain": "gain_mean", "quality_score": "quality_score_mean",
            "similarity_score": "similarity_score_mean"}
    table = pd.DataFrame({"defence": list(dict.fromkeys(source["defence"]))})
    for out, col in cols.items():
        if col in source.columns:
            means = source.groupby("defence", sort=False)[col].mean()
            table[out] = table["defence"].map(means)
    table["groups"] = table["defence"].map(source.groupby("defence", sort=False).size())
    table = table.sort_values("gain", kind="stable", na_position="last").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def binned_gain(df: pd.DataFrame, metric: str, column: str) -> pd.DataFrame:
    """Mean gain per quantile bin of ``column`` (rows: bins, columns: defences)."""
    good = ok_rows(df[df["metric"] == metric]).copy()
    if good.empty or column not in good.columns:
        return pd.DataFrame()
    good["_gain"] = _gain(good["f_clean"], good["f_def_adv"])
    values = pd.to_numeric(good[column], errors="coerce")
    good = good[np.isfinite(values)]
    values = values[np.isfinite(values)]
    if good.empty:
        return pd.DataFrame()
    if values.nunique() < 2:
        bins = pd.Series([f"{values.iloc[0]:.4g}"] * len(values), index=values.index)
    else:
        cut = pd.qcut(values, q=min(N_BINS, values.nunique()), duplicates="drop")
        bins = cut.map(lambda iv: f"{iv.left:.4g}–{iv.right:.4g}").astype(str)
        order = [f"{iv.left:.4g}–{iv.right:.4g}" for iv in cut.cat.categories]
        good["_bin"] = pd.Categorical(bins, categories=list(dict.fromkeys(order)), ordered=True)
    if "_bin" not in good.columns:
        good["_bin"] = bins
    return good.pivot_table(index="_bin", columns="defence", values="_gain", aggfunc="mean",
                            observed=True, sort=True)


# -- figures -------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _heatmap(matrix: pd.DataFrame, title: str, cmap: str, path: Path, out: "_ReportFiles", vmin=None,
             vmax=None) -> Path:
    rows, cols = matrix.shape
    fig = _figure(max(4.0, 1.0 + 0.9 * cols), max(2.5, 1.0 + 0.5 * rows))
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
    return out.figure(fig, path)


def _lines(ax, table: pd.DataFrame, xlabel: str) -> None:
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


class _ReportFiles:
    """Writes the report's files (temporary name + rename, listed in the run folder's manifest) and reads
    the images it shows; an unreadable image is remembered, shown as missing and named in the notes."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.folder = RunFolder(run_dir)
        if self.folder.is_run_folder():
            self.folder.adopt()  # a folder of an older version: list the report's files from now on
        self.advice = (f"the results are kept (results.sqlite, results.parquet, results.csv); free space and "
                       f"run `iqadef report {run_dir}` to write the report again")
        self.unreadable: dict[str, str] = {}

    def write(self, path: Path, data: bytes) -> Path:
        self.folder.record([path.relative_to(self.run_dir).as_posix()])
        atomic_write_bytes(path, data, advice=self.advice)
        return path

    def figure(self, fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return self.write(path, buffer.getvalue())

    def image(self, path: Path, size: int = 192):
        """A thumbnail of ``path`` (PIL image), or None when it cannot be read."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                return im.copy()
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt or vanished: shown as missing
            if str(path) not in self.unreadable:
                self.unreadable[str(path)] = _first_line(exc)
                warnings.warn(f"{path}: cannot be read ({_first_line(exc)}); shown as missing in the report",
                              StorageWarning, stacklevel=2)
            return None

    def notes(self) -> list[str]:
        if not self.unreadable:
            return list(NOTES)
        names = "; ".join(f"{p} ({why})" for p, why in list(self.unreadable.items())[:10])
        more = f" and {len(self.unreadable) - 10} more" if len(self.unreadable) > 10 else ""
        return list(NOTES) + [f"{len(self.unreadable)} image file(s) could not be read and are shown as missing: "
                              f"{names}{more}. Running the registry again (resume) writes unreadable example "
                              f"images anew; then run `iqadef report` again."]


def _resolve(run_dir: Path, value: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    path = path if path.is_absolute() else run_dir / path
    return path if path.exists() else None


def example_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Successful rows that saved an example D(x_a) image."""
    if "example_path" not in df.columns:
        return df.iloc[0:0]
    good = ok_rows(df)
    return good[good["example_path"].astype(str) != ""]


def _examples_figure(run_dir: Path, examples: pd.DataFrame, path: Path, out: _ReportFiles) -> Path | None:
    if examples.empty:
        return None
    first = examples.iloc[0]
    pick = examples[(examples["image"] == first["image"]) & (examples["metric"] == first["metric"])
                    & (examples["attack"] == first["attack"])].drop_duplicates("defence")
    pick = pick.head(MAX_EXAMPLE_DEFENCES)
    panels = [("clean", _resolve(run_dir, str(first.get("image_path", "")))),
              (f"attacked ({first['attack']})", _resolve(run_dir, str(first.get("adv_path", ""))))]
    panels += [(f"D(x_a): {row['defence']}", _resolve(run_dir, str(row["example_path"])))
               for _, row in pick.iterrows()]
    fig = _figure(2.2 * len(panels), 2.6)
    for k, (title, file) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        image = out.image(file) if file is not None else None
        if image is None:
            ax.text(0.5, 0.5, "missing" if file is None else "unreadable", ha="center", va="center")
        else:
            ax.imshow(image)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{first['image']} — metric {first['metric']}", fontsize=9)
    return out.figure(fig, path)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumb_data_uri(path: Path | None, out: _ReportFiles) -> str:
    image = out.image(path, size=160) if path is not None else None
    if image is None:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- table formatting ----------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return str(v)


def with_ci(agg: pd.DataFrame) -> pd.DataFrame:
    """``agg`` with each ``x_mean``/``x_ci_low``/``x_ci_high`` (or ``x``/``x_ci_*``) as "m [lo, hi]"."""
    out = pd.DataFrame(index=agg.index)
    used: set[str] = set()
    for col in agg.columns:
        if col in used:
            continue
        base = col[:-5] if col.endswith("_mean") else col
        low, high = f"{base}_ci_low", f"{base}_ci_high"
        if low in agg.columns and high in agg.columns and col not in (low, high):
            out[base] = [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else _fmt(m)
                         for m, lo, hi in zip(agg[col], agg[low], agg[high])]
            used.update({col, low, high})
        elif not (col.endswith("_ci_low") or col.endswith("_ci_high")):
            out[col] = [_fmt(v) for v in agg[col]]
            used.add(col)
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""
    if table.empty:
        return "_(empty)_\n"
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _html_table(table: pd.DataFrame, css_class: str) -> str:
    if table.empty:
        return "<p><em>(empty)</em></p>"
    return ('<div class="scroll">' + table.to_html(index=False, classes=css_class, border=0,
                                                   float_format=lambda v: _fmt(v), na_rep="–")
            + "</div>")


KEY_SCORES = ("gain", "gain_clean", "quality_score", "similarity_score", "similarity_score_clean",
              "rel_gain_x_dxa", "abs_gain_x_dxa", "rel_gain_x_xa", "abs_gain_x_xa", "rel_gain_dx_dxa",
              "abs_gain_dx_dxa", "srocc_mos_clean", "srocc_mos_adv", "srocc_mos_def_clean",
              "srocc_mos_def_adv", "srocc_clean_def_clean", "robustness_score", "normalized_absolute_gain",
              "normalized_relative_gain", "relative_gain_classic", "wasserstein_score",
              "energy_distance_score")


def key_scores(formatted: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in (*GROUP_COLUMNS, "n_images", "n_failed", *KEY_SCORES) if c in formatted.columns]
    return formatted[cols]


# -- the report ----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}
th{background:#f0f0f0}.scroll{overflow-x:auto;margin-bottom:1em}img.fig{max-width:100%}
.gallery td{text-align:center;font-size:11px}
"""

NOTES = [
    f"Confidence intervals: two-sided {int(CONFIDENCE * 100)}% Student-t interval of the mean over images "
    "(as the MSU robustness benchmark); SROCC intervals by the Fisher z-transform with variance 1.06/(n-3).",
    "Gain = |f(x) - f(D(x_a))| / f(x) (lower is better); the 'clean' row is |f(x) - f(D(x))| / f(x).",
    "PSNR uses data range 1; identical images give +inf (scikit-image, as the reference), which means leave "
    "out and count in the column's _n_inf.",
    "Defended images compared with x or x_a are first resized to x's size (bilinear, as the reference).",
    "Failed cells are excluded from every score and counted in n_failed.",
]


def write_report(run_dir: str | Path, registry: Any = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``summary.csv`` and ``figures/*.png`` into ``run_dir``.

    Returns the written files by key: ``html``, ``markdown``, ``summary_csv`` and ``figure:<stem>``
    for each figure.
    """
    run_dir = Path(run_dir)
    df, run_info = load_results(run_dir)
    out = _ReportFiles(run_dir)
    figures_dir = run_dir / "figures"
    written: dict[str, Path] = {}

    agg = aggregate(df, run_info, registry=registry)
    written["summary_csv"] = out.write(run_dir / "summary.csv", agg.to_csv(index=False).encode("utf-8"))
    short = summary_table(df, run_info)
    formatted = with_ci(agg)
    if "gain_mean" not in agg.columns and len(agg):  # the gain plugin is off: use the f values
        agg = agg.merge(short[[*GROUP_COLUMNS, "gain"]].rename(columns={"gain": "gain_mean"}),
                        on=list(GROUP_COLUMNS), how="left")
    ranking = ranking_table(agg)
    mos = has_mos(df)

    metrics = list(dict.fromkeys(df["metric"])) if "metric" in df.columns else []
    fig3, fig4, fig5 = [], [], []
    for metric in metrics:
        matrix = gain_matrix(df, metric)
        if not matrix.empty:
            fig3.append((metric, _heatmap(matrix, f"Gain ({metric}): attacks × defences, lower is better",
                                          "RdYlGn_r", figures_dir / figure_file_name("gain_heatmap", metric), out)))
        smatrix = srocc_matrix(df, metric, "mos" if mos else "f_clean")
        if not smatrix.empty:
            against = "MOS" if mos else "f(x), no MOS given"
            fig4.append((metric, _heatmap(smatrix, f"SROCC with {against} ({metric}) after defence", "RdYlGn",
                                          figures_dir / figure_file_name("srocc_heatmap", metric), out,
                                          vmin=-1, vmax=1)))
        by_ssim = binned_gain(df, metric, "ssim_x_xa")
        by_value = binned_gain(df, metric, "f_adv")
        if not (by_ssim.empty and by_value.empty):
            fig = _figure(11, 4)
            _lines(fig.add_subplot(1, 2, 1), by_ssim, "SSIM(x, x_a) bin")
            _lines(fig.add_subplot(1, 2, 2), by_value, f"f(x_a) bin ({metric})")
            fig.suptitle(f"Gain against attack visibility and attacked score ({metric})", fontsize=10)
            fig5.append((metric, out.figure(fig, figures_dir / figure_file_name("gain_bins", metric))))
    examples = example_rows(df)
    example_fig = _examples_figure(run_dir, examples, figures_dir / "examples.png", out)
    for _, path in (*fig3, *fig4, *fig5):
        written[f"figure:{path.stem}"] = path
    if example_fig is not None:
        written[f"figure:{example_fig.stem}"] = example_fig

    failed = df[df["status"].astype(str) != "ok"] if "status" in df.columns else df.iloc[0:0]
    failed_view = failed[[c for c in ("image", "metric", "attack", "defence", "error") if c in failed.columns]]

    adaptive = adaptive_table(df, run_info) if has_adaptive(df) else None

    written["html"] = _write_html(run_dir, run_info, short, formatted, ranking, fig3, fig4, fig5,
                                  example_fig, examples, failed_view, mos, out, adaptive=adaptive)
    written["markdown"] = _write_markdown(run_dir, run_info, short, formatted, ranking, fig3, fig4, fig5,
                                          example_fig, failed_view, mos, out, adaptive=adaptive)
    return written


def _run_header(run_info: dict[str, Any]) -> list[str]:
    dataset = run_info.get("dataset", {}) or {}
    lines = [f"seed: {run_info.get('seed', '?')}", f"images: {dataset.get('images', '?')}",
             f"MOS: {dataset.get('mos') or 'none'}"]
    for label, m in (run_info.get("metrics", {}) or {}).items():
        lines.append(f"metric {label}: range {m.get('range')}, "
                     f"{'higher' if m.get('higher_is_better', True) else 'lower'} is better")
    return lines


def _write_html(run_dir, run_info, short, formatted, ranking, fig3, fig4, fig5, example_fig, examples,
                failed_view, mos, out: _ReportFiles, adaptive: pd.DataFrame | None = None) -> Path:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>iqadef report</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>iqadef report: {esc(run_dir.name)}</h1>",
             "<ul>" + "".join(f"<li>{esc(s)}</li>" for s in _run_header(run_info)) + "</ul>",
             "<h2>Summary: gain per metric × attack × defence</h2>", _html_table(with_ci(short), "summary"),
             "<h2>Defence ranking (mean gain, lower is better)</h2>", _html_table(ranking, "ranking"),
             *_adaptive_html(adaptive),
             "<h2>Key scores (mean [95% CI])</h2>", _html_table(key_scores(formatted), "scores"),
             "<h2>All aggregated scores (mean [95% CI])</h2>", _html_table(formatted, "all-scores")]

    def figs(title, items, empty):
        parts.append(f"<h2>{esc(title)}</h2>")
        if not items:
            parts.append(f"<p><em>{esc(empty)}</em></p>")
        for metric, path in items:
            parts.append(f"<h3>{esc(metric)}</h3><img class='fig' alt='{esc(path.name)}' "
                         f"src='{_png_data_uri(path)}'>")

    figs("Figure 3: gain heatmap", fig3, "no successful cells")
    figs(figure4_title(mos), fig4, "not enough images for SROCC")
    figs("Figure 5: gain against SSIM(x, x_a) and attacked metric value", fig5, "no data")
    parts.append("<h2>Example images (clean / attacked / defended)</h2>")
    if example_fig is None:
        parts.append("<p><em>No example images were saved.</em></p>")
    else:
        parts.append(f"<img class='fig' alt='examples.png' src='{_png_data_uri(example_fig)}'>")
        parts.append("<table class='gallery'><tr><th>image / metric / attack / defence</th><th>clean</th>"
                     "<th>attacked</th><th>defended</th></tr>")
        for _, row in examples.head(MAX_GALLERY_ROWS).iterrows():
            cells = []
            for key in ("image_path", "adv_path", "example_path"):
                uri = _thumb_data_uri(_resolve(run_dir, str(row.get(key, ""))), out)
                cells.append(f"<td><img src='{uri}'></td>" if uri else "<td>missing</td>")
            caption = " / ".join(esc(str(row[c])) for c in ("image", "metric", "attack", "defence"))
            parts.append(f"<tr><td>{caption}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append(f"<h2>Failed cells ({len(failed_view)})</h2>")
    parts.append(_html_table(failed_view.head(200), "failed") if len(failed_view) else "<p>none</p>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in out.notes()) + "</ul>")
    parts.append("</body></html>")
    return out.write(run_dir / "report.html", "\n".join(parts).encode("utf-8"))


def _adaptive_html(adaptive: pd.DataFrame | None) -> list[str]:
    if adaptive is None:
        return []
    return [ADAPTIVE_TITLE_HTML, f"<p>{html.escape(ADAPTIVE_NOTE)}</p>", _html_table(with_ci(adaptive), "adaptive")]


def _adaptive_markdown(adaptive: pd.DataFrame | None) -> list[str]:
    if adaptive is None:
        return []
    return [f"## {ADAPTIVE_TITLE}", "", ADAPTIVE_NOTE, "", markdown_table(with_ci(adaptive))]


ADAPTIVE_TITLE = "Adaptive attacks: gain without and with attacking through the defence"
ADAPTIVE_TITLE_HTML = f"<h2>{ADAPTIVE_TITLE}</h2>"


def _write_markdown(run_dir, run_info, short, formatted, ranking, fig3, fig4, fig5, example_fig,
                    failed_view, mos, out: _ReportFiles, adaptive: pd.DataFrame | None = None) -> Path:
    lines = [f"# iqadef report: {run_dir.name}", ""]
    lines += [f"- {s}" for s in _run_header(run_info)] + [""]
    lines += ["## Summary: gain per metric × attack × defence", "", markdown_table(with_ci(short))]
    lines += ["## Defence ranking (mean gain, lower is better)", "", markdown_table(ranking)]
    lines += _adaptive_markdown(adaptive)
    lines += ["## Key scores (mean [95% CI])", "", markdown_table(key_scores(formatted)),
              "All aggregated scores are in `summary.csv` and `report.html`.", ""]

    def figs(title, items, empty):
        lines.extend([f"## {title}", ""])
        if not items:
            lines.extend([f"_{empty}_", ""])
        for metric, path in items:
            lines.extend([f"![{metric}](figures/{path.name})", ""])

    figs("Figure 3: gain heatmap", fig3, "no successful cells")
    figs(figure4_title(mos), fig4, "not enough images for SROCC")
    figs("Figure 5: gain against SSIM(x, x_a) and attacked metric value", fig5, "no data")
    lines += ["## Example images", ""]
    lines += [f"![examples](figures/{example_fig.name})" if example_fig else "_No example images were saved._", ""]
    lines += [f"## Failed cells ({len(failed_view)})", "",
              markdown_table(failed_view.head(200)) if len(failed_view) else "none", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in out.notes()] + [""]
    return out.write(run_dir / "report.md", "\n".join(lines).encode("utf-8"))
