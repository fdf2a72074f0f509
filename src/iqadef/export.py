"""``iqadef export RUN_DIR --out DIR``: a run's adversarial dataset, readable without iqadef.

The cells exported are exactly those ``results.parquet`` shows as ok: the store's rows of the grid as the run
now defines it (the run's own selection, execute/recorded.py), successful and checksum intact; rows of
earlier grids (a checkpoint replaced under the same path, an image replaced) stay out. Every such cell's x_a
(the 8-bit PNG cached under ``cache/adv/``, its sha256 checked against the store) is copied to
``DIR/<metric>/<attack>/<image>.png`` (an adaptive attack's x_a depends on the defence:
``<metric>/<attack>/<defence>/<image>.png``); ``<image>`` keeps the image's relative path in its dataset.
``--defended`` adds D(x_a) under ``defended/<metric>/<attack>/<defence>/<image>.png``. The run stores D(x_a)
only for its few example images, so D(x_a) is recomputed from the exported x_a with the defence as the run
configured it (the registry in ``run.json``); a randomised defence gets a seed derived from its key and the
image's content, not the run's own draw, so its D(x_a) is one sample of the same distribution. The index
(``index.parquet``, ``index.csv``) has one row per file: its image, metric, attack, defence, parameters,
f(x), f(x_a) (and f(D(x_a))), PSNR/SSIM to x when the run computed them, and the file's sha256.
``README.md`` is the datasheet.

Names are unique: a label or path component made folder-safe (``/ : ? * [ ] < > | "``, backslash and
control characters become ``_``) gets ``-`` and 8 hex digits of the original's sha256, and files whose paths would
still meet (also when only letter case differs) get the same suffix from their cell.

Only ``DIR`` is written, and the export holds the run folder's lock (shared), so it never reads a run that is
being written. A non-empty ``DIR`` that is not an earlier export is refused. The marker ``.iqadef-export``
lists every file with the sha256 it was written with; a re-export deletes an earlier file it does not write
again only when it is a regular file inside ``DIR`` (no symbolic link on the way) whose content still has
that sha256. Temporary files of killed exports are swept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from iqadef._version import __version__
from iqadef.core.errors import IqadefError
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.store.results import RunLock, atomic_write_bytes, read_cells
from iqadef.store.rundir import MARKER as RUN_MARKER
from iqadef.store.rundir import is_stale_temp, remove_stale_temp_files

MARKER = ".iqadef-export"
#: 2: marker entries are ``[path, sha256]`` (1: bare paths, whose files a re-export leaves in place).
FORMAT = 2
_UNSAFE = re.compile(r'[<>:"/\\|?*\[\]\x00-\x1f]')
#: Names at the top of an export that a metric's folder must not take.
_RESERVED = {n.casefold() for n in ("defended", "index.parquet", "index.csv", "README.md", MARKER)}
_FIXED = ("index.parquet", "index.csv", "README.md")


@dataclass
class ExportSummary:
    out: Path
    adversarial: int = 0
    defended: int = 0
    skipped: list[str] = field(default_factory=list)


def _short_hash(value: Any, length: int = 8) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _segment(label: str, reserved: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """A label or path component as one folder-safe name; a name sanitising changed (or a reserved one) gets
    a short hash of the original, so two labels never merge into one folder."""
    label = str(label)
    text = _UNSAFE.sub("_", label).strip(" .")[:120] or "_"
    if text != label or text.casefold() in reserved:
        text = f"{text}-{_short_hash(label)}"
    return text


def _image_parts(image: str) -> list[str]:
    """An image's name in the run (its relative path) as safe path components, the last one ``<stem>.png``."""
    parts = [p for p in PurePosixPath(str(image)).parts if p not in ("", "/")] or ["_"]
    *folders, last = parts
    stem = last.rsplit(".", 1)[0] if "." in last.strip(".") else last
    return [_segment(p) for p in folders] + [f"{_segment(stem)}.png"]


def _unique_paths(wanted: dict[Any, list[str]]) -> dict[Any, str]:
    """``key -> path components`` as unique relative paths: a file whose path meets another file's or a
    folder's (letter case ignored, as on macOS and Windows) gets a short hash of its key in its name."""
    parts = {key: list(p) for key, p in wanted.items()}
    for length in (8, 16, 64):
        paths = {key: "/".join(p) for key, p in parts.items()}
        count = Counter(path.casefold() for path in paths.values())
        folders = {"/".join(p[:i]).casefold() for p in parts.values() for i in range(1, len(p))}
        clash = [key for key, path in paths.items() if count[path.casefold()] > 1 or path.casefold() in folders]
        if not clash:
            return paths
        for key in clash:
            stem = wanted[key][-1][: -len(".png")]
            parts[key][-1] = f"{stem}-{_short_hash(key, length)}.png"
    raise IqadefError(f"export: cannot give {len(clash)} file(s) unique names (e.g. {paths[clash[0]]!r})")


def _prepare_out(out: Path, run_dir: Path) -> dict[str, str | None]:
    """Refuse a folder that is not ours; return the files an earlier export listed, with the sha256 each was
    written with (None: an older marker that recorded none)."""
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise IqadefError(f"--out {out}: is inside the run folder {run_dir}; export to a folder of its own")
    if out.exists() and not out.is_dir():
        raise IqadefError(f"--out {out}: exists and is not a folder")
    if not out.is_dir():
        return {}
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        foreign = [e for e in out.iterdir() if not (is_stale_temp(e.name, older_names=False) and e.is_file())]
        if foreign:
            what = "a run folder" if (out / RUN_MARKER).is_file() else "not an earlier iqadef export"
            raise IqadefError(f"--out {out}: the folder is not empty and is {what}; give an empty or new folder")
        return {}
    earlier: dict[str, str | None] = {}
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()[1:]
    except (OSError, UnicodeDecodeError):
        return {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, str):
            earlier[entry] = None
        elif isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry):
            earlier[entry[0]] = entry[1]
    return earlier


@renamed_registry_keyword
def export_run(run_dir: str | Path, out: str | Path, *, defended: bool = False, plugins: Any = None) -> ExportSummary:
    """Write the export of ``run_dir`` into ``out`` (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out).expanduser()
    if not run_dir.is_dir():
        raise IqadefError(f"{run_dir}: not a folder; give the run folder of `iqadef run` (its `output`)")
    with RunLock(run_dir, shared=True):
        return _export(run_dir, out, defended, plugins)


def _export(run_dir: Path, out: Path, defended: bool, plugins: Any) -> ExportSummary:
    from iqadef.core.plugins import installed_plugins
    from iqadef.execute.recorded import current_rows, open_grid, read_run_info

    plugins = plugins or installed_plugins()
    info = read_run_info(run_dir)
    config, dataset = open_grid(run_dir, info, plugins)
    stored = read_cells(run_dir)
    rows, changed = current_rows(stored, config, dataset)
    summary = ExportSummary(out)
    if changed:
        summary.skipped.append(
            f"{changed} cell(s) of the run fail their checksum (changed after they were "
            f"written; the tables show them as failed): left out; resume the run to recompute them"
        )
    if not rows:
        raise IqadefError(f"{run_dir}: no successful cell of the run's grid is stored; nothing to export")
    earlier = _prepare_out(out, run_dir)
    rows.sort(key=lambda r: (r["metric"], r["attack"], r["defence"], r["image"]))

    # x_a: one file per cached image (a plain attack's x_a serves every defence)
    recorded = stored.sha256_of()
    by_adv: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["adv_path"] and row["adv_path"] not in by_adv:
            by_adv[row["adv_path"]] = row
    adv_sha: dict[str, str] = {}
    wanted: dict[Any, list[str]] = {}
    for adv_path, row in by_adv.items():
        data = _checked_png(run_dir, adv_path, recorded, summary)
        if data is None:
            continue
        adv_sha[adv_path] = hashlib.sha256(data).hexdigest()
        folders = [_segment(row["metric"], _RESERVED), _segment(row["attack"])]
        if row.get("adaptive") not in (None, "", "none"):
            folders.append(_segment(row["defence"]))
        wanted[("adversarial", adv_path)] = folders + _image_parts(row["image"])

    # D(x_a): one file per cell of a purifying defence
    defended_data: dict[Any, tuple[dict[str, Any], bytes]] = {}
    if defended:
        defended_data = _defended(run_dir, config, rows, adv_sha, summary)
        for key, (row, _) in defended_data.items():
            wanted[key] = [
                "defended",
                _segment(row["metric"], _RESERVED),
                _segment(row["attack"]),
                _segment(row["defence"]),
            ] + _image_parts(row["image"])
    names = _unique_paths(wanted)

    records, files = [], {}  # files: relative path -> (sha256, where its bytes come from)
    for key, rel in names.items():
        if key[0] == "adversarial":
            row = by_adv[key[1]]
            files[rel] = (adv_sha[key[1]], run_dir / key[1])
            records.append(_record(row, rel, adv_sha[key[1]], "adversarial"))
        else:
            row, data = defended_data[key]
            files[rel] = (hashlib.sha256(data).hexdigest(), data)
            records.append(_record(row, rel, files[rel][0], "defended"))
    records.sort(key=lambda r: (r["kind"] != "adversarial", r["file"]))
    index = pd.DataFrame.from_records(records)
    buffer = io.BytesIO()
    index.to_parquet(buffer, index=False)
    fixed = {
        "index.parquet": buffer.getvalue(),
        "index.csv": index.to_csv(index=False).encode(),
        "README.md": _datasheet(info, index, defended, __version__, plugins).encode(),
    }
    for name, data in fixed.items():
        files[name] = (hashlib.sha256(data).hexdigest(), data)

    for rel in files:
        _refuse_links(out, rel)  # before anything is written or deleted
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(_folders(out))  # left by a killed export
    header = {
        "iqadef_export": FORMAT,
        "iqadef_version": __version__,
        "note": "written by iqadef export: the files below, with the sha256 each was written with",
    }
    stale = {rel: sha for rel, sha in earlier.items() if rel not in files and sha is not None}
    # the marker lists every file before it is written (and the earlier files still to delete), so an export
    # killed at any point is cleaned up by the next one
    _write_marker(out, header, {**stale, **{rel: sha for rel, (sha, _) in files.items()}})
    kept = sum(1 for rel, sha in earlier.items() if rel not in files and sha is None)
    for rel, sha in stale.items():
        _remove_own_file(out, rel, sha)
    for rel, (sha, source) in files.items():
        data = source if isinstance(source, bytes) else source.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise IqadefError(f"{source}: changed while it was exported; export again")
        atomic_write_bytes(out / rel, data, advice="free space and export again")
    _write_marker(out, header, {rel: sha for rel, (sha, _) in files.items()})
    if kept:
        summary.skipped.append(
            f"{kept} file(s) of an older export (its marker records no sha256) were not "
            f"written again and are left in {out}"
        )
    summary.adversarial = sum(1 for key in names if key[0] == "adversarial")
    summary.defended = len(defended_data)
    return summary


def _write_marker(out: Path, header: dict[str, Any], files: dict[str, str]) -> None:
    lines = [json.dumps(header)] + [json.dumps([rel, sha]) for rel, sha in files.items()]
    atomic_write_bytes(out / MARKER, ("\n".join(lines) + "\n").encode(), advice="free space and export again")


def _folders(out: Path) -> list[Path]:
    """Every folder of the export (symbolic links are not followed)."""
    return [Path(root) for root, _, _ in os.walk(out)]


def _refuse_links(out: Path, rel: str) -> None:
    """Refuse to write ``rel`` when a folder on its way is a symbolic link or not a folder (so nothing is
    written outside ``out``), or the file's place is taken by a folder."""
    path = out
    parts = rel.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise IqadefError(f"--out {out}: {path} cannot be read ({exc.strerror or exc})") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            raise IqadefError(
                f"--out {out}: {path} is a symbolic link; an export writes only inside its folder: "
                f"remove the link or export to a new folder"
            )
        if not last and not stat.S_ISDIR(mode):
            raise IqadefError(
                f"--out {out}: {path} is a file where the export needs a folder; move it away or export to a new folder"
            )
        if last and stat.S_ISDIR(mode):
            raise IqadefError(
                f"--out {out}: {path} is a folder where the export writes a file; move it away or "
                f"export to a new folder"
            )


def _remove_own_file(out: Path, rel: str, sha: str) -> bool:
    """Delete ``out/rel`` if it is a regular file reached without symbolic links whose content has ``sha``:
    a file iqadef wrote and nobody changed since. Folders are opened one by one without following links
    (``O_NOFOLLOW``), so a link swapped in cannot lead the deletion out of ``out``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts) or len(sha) != 64:
        return False
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, flags, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = inner
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                return False
            digest = hashlib.sha256()
            with os.fdopen(os.dup(file_fd), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        finally:
            os.close(file_fd)
        if digest.hexdigest() != sha:
            return False
        os.unlink(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)
    for i in range(len(parts) - 1, 0, -1):  # folders the deletion emptied (a user's file keeps its folder)
        folder = out.joinpath(*parts[:i])
        if folder.is_symlink():
            break
        try:
            folder.rmdir()
        except OSError:
            break
    return True


def _checked_png(run_dir: Path, rel: str, recorded: dict[str, str], summary: ExportSummary) -> bytes | None:
    expected = recorded.get(rel)
    if expected is None:
        summary.skipped.append(f"{rel}: the store records no sha256 for it, so it cannot be checked; left out")
        return None
    try:
        data = (run_dir / rel).read_bytes()
    except OSError as exc:
        summary.skipped.append(f"{rel}: cannot be read ({exc.strerror or exc}); resume the run to write it again")
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        summary.skipped.append(f"{rel}: its sha256 differs from the store's (damaged); resume the run to recompute it")
        return None
    return data


def _record(row: dict[str, Any], rel: str, sha: str, kind: str) -> dict[str, Any]:
    scores = json.loads(row.get("scores") or "{}") if kind == "adversarial" else {}
    return {
        "file": rel,
        "kind": kind,
        "image": row["image"],
        "metric": row["metric"],
        "attack": row["attack"],
        "adaptive": row.get("adaptive") or "none",
        "defence": row["defence"] if kind == "defended" or row.get("adaptive") not in (None, "", "none") else "",
        "metric_params": row["metric_params"],
        "attack_params": row["attack_params"],
        "defence_params": row["defence_params"] if kind == "defended" else "",
        "f_clean": row["f_clean"],
        "f_adv": row["f_adv"],
        "f_def_adv": row["f_def_adv"] if kind == "defended" else float("nan"),
        "mos": row["mos"] if row.get("mos") is not None else float("nan"),
        "psnr_x_xa": scores.get("psnr_x_xa", float("nan")),
        "ssim_x_xa": scores.get("ssim_x_xa", float("nan")),
        "source_sha256": row["image_sha256"],
        "sha256": sha,
    }


def _defended(
    run_dir: Path, config: Any, rows: list[dict[str, Any]], adv_sha: dict[str, str], summary: ExportSummary
) -> dict[Any, tuple[dict[str, Any], bytes]]:
    """D(x_a) for every exported cell of a purifying defence, recomputed from the exported x_a."""
    import torch

    from iqadef.store.artifacts import _seed, png_bytes, read_png

    defences = {d.key(): d for d in config.defences}
    certified = {c.key(): c.label for c in config.certified}
    out: dict[Any, tuple[dict[str, Any], bytes]] = {}
    for label in sorted({certified[r["defence_key"]] for r in rows if r["defence_key"] in certified}):
        summary.skipped.append(f"{label}: a certified defence (its output is a score, not an image): no D(x_a) files")
    for row in rows:
        defence = defences.get(row["defence_key"])
        if defence is None or row["adv_path"] not in adv_sha:
            continue
        data = (run_dir / row["adv_path"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != adv_sha[row["adv_path"]]:
            raise IqadefError(f"{run_dir / row['adv_path']}: changed while it was exported; export again")
        x_adv = read_png(io.BytesIO(data)).unsqueeze(0)
        defence.load("cpu")
        seed = _seed("export", row["defence_key"], row["image_sha256"])
        with torch.no_grad():
            dxa = defence.purify(x_adv, seed=seed)
        key = ("defended", row["metric_key"], row["attack_key"], row["defence_key"], row["image"])
        out[key] = (row, png_bytes(dxa[0]))
    return out


def _datasheet(info: dict[str, Any], index: pd.DataFrame, defended: bool, version: str, plugins: Any) -> str:
    raw = (info.get("registry") or {}).get("dataset")
    dataset = info.get("dataset") or {}
    licence, title = "", ""
    name = raw.get("name") if isinstance(raw, dict) else (raw if isinstance(raw, str) else None)
    if plugins is not None and name in set(plugins.names("datasets")):
        cls = plugins.get("datasets", name)
        licence, title = cls.licence, cls.title or cls.name
    adv = index[index["kind"] == "adversarial"] if len(index) else index
    lines = [
        "# Adversarial images exported by iqadef",
        "",
        f"Made with iqadef {version} from a run of iqadef {info.get('iqadef_version', '?')} "
        f"(`iqadef export{' --defended' if defended else ''}`).",
        "",
        "## Source dataset",
        "",
        f"- dataset entry of the registry: `{json.dumps(raw) if raw is not None else 'builtin (default)'}`",
        f"- {title}" if title else f"- images folder: `{dataset.get('images', '?')}`",
        f"- images in the run: {dataset.get('count', '?')}",
        f"- licence of the source images: {licence or 'that of the source dataset (see its terms)'}; these "
        f"adversarial images are derived from them and inherit those terms.",
        "",
        "## How it was made",
        "",
        f"- metrics: {', '.join(sorted(index['metric'].unique())) if len(index) else '-'}",
        f"- attacks: {', '.join(sorted(index['attack'].unique())) if len(index) else '-'}",
        f"- seed of the run: {info.get('seed')}; batch size {info.get('batch_size')}",
        f"- {len(adv)} adversarial images (x_a, 8-bit PNG, exactly the bytes the run cached and scored)"
        + (
            f"; {len(index) - len(adv)} defended images D(x_a), recomputed from x_a with the run's defences "
            f"(randomised defences: seeded from the defence and the image, one sample of their draw)"
            if defended
            else ""
        ),
        "",
        "## Files",
        "",
        "- `<metric>/<attack>/<image>.png`: x_a (adaptive attacks: `<metric>/<attack>/<defence>/<image>.png`); "
        "`<image>` is the image's relative path in its dataset",
    ]
    if defended:
        lines.append("- `defended/<metric>/<attack>/<defence>/<image>.png`: D(x_a)")
    lines += [
        "- `index.parquet`, `index.csv`: one row per file: file, kind, image, metric, attack, adaptive, defence, "
        "parameters (JSON), f_clean = f(x), f_adv = f(x_a), f_def_adv = f(D(x_a)) as the run computed it, mos, "
        "psnr_x_xa and ssim_x_xa (when the run computed them), source_sha256 (of x), sha256 (of the file)",
        '- a label or name that had to be made folder-safe (`/ : ? * [ ] < > | " \\` become `_`) ends in `-` and '
        "8 hex digits of the original's sha256, so no two share a folder; the index gives the original labels",
        "",
        "## Loading it back",
        "",
        "In an iqadef registry: `dataset: {name: iqadef-export, path: THIS_FOLDER}` (options `metric`, `attack`, "
        "`kind: defended`), or `dataset: {images: THIS_FOLDER}` for every PNG as a plain folder.",
        "",
    ]
    return "\n".join(lines)
