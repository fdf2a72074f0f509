"""``iqadef export RUN_DIR --out DIR``: a run's adversarial dataset, readable without iqadef.

Every stored x_a (the 8-bit PNG cached under ``cache/adv/``, its sha256 checked against the store) is
copied to ``DIR/<metric>/<attack>/<image>.png`` (an adaptive attack's x_a depends on the defence:
``<metric>/<attack>/<defence>/<image>.png``); ``--defended`` adds D(x_a) under ``defended/<metric>/<attack>/
<defence>/<image>.png``. The run stores D(x_a) only for its few example images, so D(x_a) is recomputed from
the exported x_a with the defence as the run configured it (the registry in ``run.json``); a randomised
defence gets a seed derived from its key and the image's content, not the run's own draw, so its D(x_a) is
one sample of the same distribution. The index (``index.parquet``, ``index.csv``) has one row per file:
its image, metric, attack, defence, parameters, f(x), f(x_a) (and f(D(x_a))), PSNR/SSIM to x when the run
computed them, and the file's sha256. ``README.md`` is the datasheet.

Only ``DIR`` is written. A non-empty ``DIR`` that is not an earlier export is refused; an earlier export's
files (listed in its marker ``.iqadef-export``) are replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .._version import __version__
from .errors import IqadefError
from .rundir import MARKER as RUN_MARKER
from .store import CELL_COLUMNS, atomic_write_bytes, row_checksum

MARKER = ".iqadef-export"
FORMAT = 1
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@dataclass
class ExportSummary:
    out: Path
    adversarial: int = 0
    defended: int = 0
    skipped: list[str] = field(default_factory=list)


def _segment(label: str) -> str:
    """A plugin label as one folder name (``/`` and characters Windows refuses become ``_``)."""
    text = _UNSAFE.sub("_", str(label)).strip(" .") or "_"
    return text[:200]


def _read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    info_path = run_dir / "run.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IqadefError(f"{info_path}: missing; is {run_dir} the folder of `iqadef run` (its `output`)?") from None
    except (OSError, ValueError) as exc:
        raise IqadefError(f"{info_path}: cannot be read ({exc})") from None
    store = run_dir / "results.sqlite"
    if not store.is_file():
        raise IqadefError(f"{store}: no result store; run `iqadef run` first")
    try:
        con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.row_factory = sqlite3.Row
            present = {r[1] for r in con.execute("PRAGMA table_info(cells)")}
            columns = [c for c in CELL_COLUMNS if c in present]
            rows = []
            for r in con.execute(f"SELECT {', '.join(columns)}, checksum FROM cells"):
                values = {c: r[c] for c in columns}
                if r["checksum"] == row_checksum(values) and values["status"] == "ok":
                    rows.append(values)
            artifacts = {r["path"]: r["sha256"] for r in con.execute("SELECT path, sha256 FROM artifacts")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise IqadefError(f"{store}: cannot be read ({exc})") from None
    return info, rows, artifacts


def _prepare_out(out: Path, run_dir: Path) -> list[str]:
    """Refuse a folder that is not ours; return the files an earlier export listed (to be replaced)."""
    out = out.expanduser()
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise IqadefError(f"--out {out}: is inside the run folder {run_dir}; export to a folder of its own")
    if out.exists() and not out.is_dir():
        raise IqadefError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        if not marker.is_file():
            what = "a run folder" if (out / RUN_MARKER).is_file() else "not an earlier iqadef export"
            raise IqadefError(f"--out {out}: the folder is not empty and is {what}; give an empty or new folder")
        try:
            lines = marker.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines[1:] if line.strip()]
        except (OSError, ValueError):
            return []
    return []


def export_run(run_dir: str | Path, out: str | Path, *, defended: bool = False, registry: Any = None) -> ExportSummary:
    """Write the export of ``run_dir`` into ``out`` (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out).expanduser()
    if not run_dir.is_dir():
        raise IqadefError(f"{run_dir}: not a folder; give the run folder of `iqadef run` (its `output`)")
    info, rows, artifacts = _read_run(run_dir)
    if not rows:
        raise IqadefError(f"{run_dir}: no successful cell is stored; nothing to export")
    earlier = _prepare_out(out, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(out)
    records: list[dict[str, Any]] = []
    written: dict[str, str] = {}  # relative file -> adv_path it holds
    by_adv: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["metric"], r["attack"], r["defence"], r["image"])):
        if row["adv_path"] and row["adv_path"] not in by_adv:
            by_adv[row["adv_path"]] = row
    names: dict[tuple[str, ...], set[str]] = {}
    for adv_path, row in by_adv.items():
        data = _checked_png(run_dir, adv_path, artifacts, summary)
        if data is None:
            continue
        parts = [_segment(row["metric"]), _segment(row["attack"])]
        if row.get("adaptive") not in (None, "", "none"):
            parts.append(_segment(row["defence"]))
        rel = "/".join(parts + [_png_name(row["image"], names.setdefault(tuple(parts), set()))])
        written[rel] = adv_path
        scores = json.loads(row.get("scores") or "{}")
        records.append(_record(row, rel, data, scores, kind="adversarial"))
    manifest = list(written)
    defended_records: list[dict[str, Any]] = []
    if defended:
        defended_records = _defended(run_dir, info, rows, by_adv, written, registry, summary)
        manifest += [r["file"] for r in defended_records]
    _write_files(out, earlier, manifest, run_dir, written, defended_records, __version__)
    records += [{k: v for k, v in r.items() if k != "_data"} for r in defended_records]
    index = pd.DataFrame.from_records(records)
    buffer = io.BytesIO()
    index.to_parquet(buffer, index=False)
    atomic_write_bytes(out / "index.parquet", buffer.getvalue())
    atomic_write_bytes(out / "index.csv", index.to_csv(index=False).encode())
    atomic_write_bytes(out / "README.md", _datasheet(info, index, defended, __version__, registry).encode())
    summary.adversarial = len(written)
    summary.defended = len(defended_records)
    return summary


def _checked_png(run_dir: Path, rel: str, artifacts: dict[str, str], summary: ExportSummary) -> bytes | None:
    try:
        data = (run_dir / rel).read_bytes()
    except OSError as exc:
        summary.skipped.append(f"{rel}: cannot be read ({exc.strerror or exc}); resume the run to write it again")
        return None
    expected = artifacts.get(rel)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        summary.skipped.append(f"{rel}: its sha256 differs from the store's (damaged); resume the run to recompute it")
        return None
    return data


def _png_name(image: str, taken: set[str]) -> str:
    stem = image.rsplit(".", 1)[0] if "." in Path(image).name else image
    name = f"{stem}.png"
    if name in taken:
        name = f"{image}.png"
    taken.add(name)
    return name


def _record(row: dict[str, Any], rel: str, data: bytes, scores: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "file": rel, "kind": kind, "image": row["image"], "metric": row["metric"], "attack": row["attack"],
        "adaptive": row.get("adaptive") or "none",
        "defence": row["defence"] if kind == "defended" or row.get("adaptive") not in (None, "", "none") else "",
        "metric_params": row["metric_params"], "attack_params": row["attack_params"],
        "defence_params": row["defence_params"] if kind == "defended" else "",
        "f_clean": row["f_clean"], "f_adv": row["f_adv"],
        "f_def_adv": row["f_def_adv"] if kind == "defended" else float("nan"),
        "mos": row["mos"] if row.get("mos") is not None else float("nan"),
        "psnr_x_xa": scores.get("psnr_x_xa", float("nan")), "ssim_x_xa": scores.get("ssim_x_xa", float("nan")),
        "source_sha256": row["image_sha256"], "sha256": hashlib.sha256(data).hexdigest(),
    }


def _defended(run_dir: Path, info: dict[str, Any], rows: list[dict[str, Any]], by_adv: dict[str, dict[str, Any]],
              written: dict[str, str], registry: Any, summary: ExportSummary) -> list[dict[str, Any]]:
    """D(x_a) for every stored cell: recomputed from the exported x_a with the run's defence."""
    import torch

    from .registry import parse_run_config
    from .run.artifacts import _seed, png_bytes, read_png

    if not isinstance(info.get("registry"), dict) or not info.get("registry_file"):
        raise IqadefError(f"{run_dir / 'run.json'}: holds no registry (an older iqadef); --defended needs it to "
                          f"rebuild the defences: run the registry again with this iqadef")
    config = parse_run_config(dict(info["registry"]), Path(info["registry_file"]), registry=registry)
    defences = {d.key(): d for d in config.defences}
    rel_of = {adv: rel for rel, adv in written.items()}
    out = []
    for row in sorted(rows, key=lambda r: (r["metric"], r["attack"], r["defence"], r["image"])):
        defence = defences.get(row["defence_key"])
        rel_adv = rel_of.get(row["adv_path"])
        if defence is None or rel_adv is None:
            if defence is None:
                summary.skipped.append(f"{row['defence']}: not in the registry of run.json any more; its D(x_a) "
                                       f"left out")
            continue
        x_adv = read_png(run_dir / row["adv_path"]).unsqueeze(0)
        defence.load("cpu")
        seed = _seed("export", row["defence_key"], row["image_sha256"])
        with torch.no_grad():
            dxa = defence.purify(x_adv, seed=seed)
        data = png_bytes(dxa[0])
        parts = ["defended", *rel_adv.split("/")[:2], _segment(row["defence"]), rel_adv.split("/")[-1]]
        record = _record(row, "/".join(parts), data, {}, kind="defended")
        record["_data"] = data
        out.append(record)
    seen: set[str] = set()
    unique = []
    for r in out:
        if r["file"] not in seen:
            seen.add(r["file"])
            unique.append(r)
    return unique


def _write_files(out: Path, earlier: list[str], manifest: list[str], run_dir: Path, written: dict[str, str],
                 defended_records: list[dict[str, Any]], version: str) -> None:
    header = json.dumps({"iqadef_export": FORMAT, "iqadef_version": version})
    for rel in earlier:  # an earlier export's files that this one does not write again
        if isinstance(rel, str) and rel not in manifest and ".." not in Path(rel).parts and not Path(rel).is_absolute():
            (out / rel).unlink(missing_ok=True)
    # the marker (and manifest) is written before the files, so a killed export can be replaced by the next
    fixed = ["index.parquet", "index.csv", "README.md"]
    atomic_write_bytes(out / MARKER, "\n".join([header, *(json.dumps(r) for r in manifest + fixed)]).encode() + b"\n")
    for rel, adv in written.items():
        atomic_write_bytes(out / rel, (run_dir / adv).read_bytes())
    for r in defended_records:
        atomic_write_bytes(out / r["file"], r["_data"])


def _datasheet(info: dict[str, Any], index: pd.DataFrame, defended: bool, version: str, registry: Any) -> str:
    raw = (info.get("registry") or {}).get("dataset")
    dataset = info.get("dataset") or {}
    licence, title = "", ""
    name = raw.get("name") if isinstance(raw, dict) else (raw if isinstance(raw, str) else None)
    if registry is not None and name in set(registry.names("datasets")):
        cls = registry.get("datasets", name)
        licence, title = cls.licence, cls.title or cls.name
    adv = index[index["kind"] == "adversarial"] if len(index) else index
    lines = [
        "# Adversarial images exported by iqadef", "",
        f"Made with iqadef {version} from a run of iqadef {info.get('iqadef_version', '?')} "
        f"(`iqadef export{' --defended' if defended else ''}`).", "",
        "## Source dataset", "",
        f"- dataset entry of the registry: `{json.dumps(raw) if raw is not None else 'builtin (default)'}`",
        f"- {title}" if title else f"- images folder: `{dataset.get('images', '?')}`",
        f"- images in the run: {dataset.get('count', '?')}",
        f"- licence of the source images: {licence or 'that of the source dataset (see its terms)'}; these "
        f"adversarial images are derived from them and inherit those terms.", "",
        "## How it was made", "",
        f"- metrics: {', '.join(sorted(index['metric'].unique())) if len(index) else '-'}",
        f"- attacks: {', '.join(sorted(index['attack'].unique())) if len(index) else '-'}",
        f"- seed of the run: {info.get('seed')}; batch size {info.get('batch_size')}",
        f"- {len(adv)} adversarial images (x_a, 8-bit PNG, exactly the bytes the run cached and scored)"
        + (f"; {len(index) - len(adv)} defended images D(x_a), recomputed from x_a with the run's defences "
           f"(randomised defences: seeded from the defence and the image, one sample of their draw)" if defended else ""),
        "", "## Files", "",
        "- `<metric>/<attack>/<image>.png`: x_a (adaptive attacks: `<metric>/<attack>/<defence>/<image>.png`)",
    ]
    if defended:
        lines.append("- `defended/<metric>/<attack>/<defence>/<image>.png`: D(x_a)")
    lines += [
        "- `index.parquet`, `index.csv`: one row per file: file, kind, image, metric, attack, adaptive, defence, "
        "parameters (JSON), f_clean = f(x), f_adv = f(x_a), f_def_adv = f(D(x_a)) as the run computed it, mos, "
        "psnr_x_xa and ssim_x_xa (when the run computed them), source_sha256 (of x), sha256 (of the file)", "",
        "## Loading it back", "",
        "In an iqadef registry: `dataset: {name: iqadef-export, path: THIS_FOLDER}` (options `metric`, `attack`, "
        "`kind: defended`), or `dataset: {images: THIS_FOLDER}` for every PNG as a plain folder.", "",
    ]
    return "\n".join(lines)
