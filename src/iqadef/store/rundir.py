"""The run folder: which folder a run may write into, and which of its files are iqadef's.

A run only ever deletes what it wrote itself:

* a folder is a *run folder* when it holds the marker ``.iqadef-run`` (or, for folders made before the
  marker existed, a ``results.sqlite`` or a ``run.json`` written by iqadef); a run refuses an existing
  non-empty folder that is not one, and always refuses ``/`` and the home folder;
* the marker is also the manifest: iqadef appends the relative path of every file it is about to write
  (cache images, examples, figures) *before* writing it, so a killed run cannot leave a file of its own
  unlisted; ``--fresh`` deletes the listed files, the fixed names iqadef owns (``results.*``,
  ``run.json``, ``report.*``, ``summary.csv``) and the files the store knows, and nothing else;
* temporary files are named ``.iqadef-tmp-<pid>-<random>.tmp`` (:func:`temp_prefix`); a resume sweeps
  only those (of processes no longer alive) and the temporary names of earlier iqadef versions, and only
  in the folders iqadef writes into.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Iterable

from iqadef.core.errors import IqadefError
from iqadef.core.files import atomic_write_bytes, temp_prefix, write_error
from iqadef.store.results import listed_files

MARKER = ".iqadef-run"
LOCK = ".lock"
FORMAT = 1
#: Files a run folder holds under fixed names; inside a run folder they are always iqadef's.
FIXED_NAMES = (
    "results.sqlite",
    "results.sqlite-wal",
    "results.sqlite-shm",
    "results.sqlite-journal",
    "results.parquet",
    "results.csv",
    "run.json",
    "report.html",
    "report.md",
    "summary.csv",
)
#: Folders iqadef creates; removed by ``--fresh`` only when nothing else is left in them.
OWN_FOLDERS = ("figures", "examples", "cache/adv", "cache")

_TEMP = re.compile(r"^\.iqadef-tmp-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
# Names earlier versions gave temporary files (``.NAME.XXXXXXXX.tmp`` from mkstemp, ``.results.csv.tmp``),
# recognised only when NAME is a name iqadef itself writes.
_OLD_TEMP = re.compile(r"^\.(?P<name>.+?)(\.[a-z0-9_]{8})?\.tmp$")
_OWN_NAME = re.compile(r"^([0-9a-f]{64}|[0-9a-f]{24})\.png$")
# Figure names of versions before figure names carried a hash of the label (report/figures.py, figure_file_name).
_OLD_FIGURE = re.compile(r"^((gain_heatmap|srocc_heatmap|gain_bins)_[A-Za-z0-9._-]+|examples)\.png$")


def _refuse(message: str) -> IqadefError:
    return IqadefError(f"output: {message}")


def _made_by_iqadef(folder: Path) -> bool:
    """A folder of an iqadef version from before the marker: it has a result store or iqadef's run.json."""
    if (folder / "results.sqlite").is_file():
        return True
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "iqadef_version" in info


class RunFolder:
    """One run folder: its marker/manifest, ``--fresh`` and the sweep of stale temporary files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.marker = self.path / MARKER
        self._recorded: set[str] | None = None

    # -- recognising --------------------------------------------------------------------------
    def is_run_folder(self) -> bool:
        return self.marker.is_file() or _made_by_iqadef(self.path)

    def _header(self) -> dict:
        try:
            with self.marker.open(encoding="utf-8") as f:
                first = f.readline()
            header = json.loads(first)
            return header if isinstance(header, dict) else {}
        except (OSError, ValueError):
            return {}

    def adopt(self) -> None:
        """Write the marker if it is missing (a new folder, or a folder of an older iqadef version)."""
        if self.marker.is_file():
            return
        legacy = _made_by_iqadef(self.path)
        self._write_manifest([], legacy=legacy)

    # -- the manifest ---------------------------------------------------------------------------
    def recorded(self) -> set[str]:
        """Relative paths of every file iqadef recorded before writing it here."""
        if self._recorded is None:
            self._recorded = set()
            try:
                lines = self.marker.read_text(encoding="utf-8").splitlines()[1:]
            except OSError:
                lines = []
            for line in lines:
                try:
                    rel = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill: the file it named was not written yet
                if isinstance(rel, str):
                    self._recorded.add(rel)
        return self._recorded

    def record(self, rels: Iterable[str]) -> None:
        """List ``rels`` (relative paths) in the manifest before they are written. No-op outside a run folder."""
        if not self.marker.is_file():
            return
        known = self.recorded()
        new = [rel for rel in dict.fromkeys(rels) if rel not in known]
        if not new:
            return
        text = "".join(json.dumps(rel) + "\n" for rel in new)
        try:
            with self.marker.open("a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise _write_error(exc, self.marker) from None
        known.update(new)

    def _write_manifest(self, rels: Iterable[str], legacy: bool) -> None:
        header = {
            "iqadef_run_folder": FORMAT,
            "legacy": legacy,
            "note": "written by iqadef: the files below are the ones it wrote here (--fresh deletes only those)",
        }
        lines = [json.dumps(header)] + [json.dumps(rel) for rel in rels]
        atomic_write_bytes(self.marker, ("\n".join(lines) + "\n").encode("utf-8"))
        self._recorded = set(rels)

    # -- deleting only our own files ------------------------------------------------------------
    def _inside(self, rel: str) -> Path | None:
        """``rel`` as a path in this folder, or None when it would leave it (``..``, absolute, symlinked folder)."""
        if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
            return None
        path = self.path / rel
        try:
            if not path.parent.resolve().is_relative_to(self.path.resolve()):
                return None
        except OSError:
            return None
        return path

    def own_files(self) -> set[str]:
        """Everything iqadef wrote here: fixed names, the manifest, and what the store lists."""
        own = set(FIXED_NAMES) | self.recorded() | listed_files(self.path / "results.sqlite")
        if self._header().get("legacy"):  # files of an older version, written before the manifest
            figures = self.path / "figures"
            if figures.is_dir():
                own |= {f"figures/{p.name}" for p in figures.iterdir() if _OLD_FIGURE.match(p.name)}
        return own

    def fresh(self) -> int:
        """Delete every file iqadef wrote here (``--fresh``); a user's own files stay. Returns the count."""
        removed = 0
        for rel in sorted(self.own_files()):
            path = self._inside(rel)
            if path is None or not (path.is_file() or path.is_symlink()):
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise IqadefError(f"{path}: cannot delete ({exc.strerror or exc}) for --fresh") from None
        self.remove_stale_temp_files()
        for folder in self._own_folders():
            try:
                folder.rmdir()  # only when empty: a user's file keeps its folder
            except OSError:
                pass
        self._write_manifest([], legacy=False)
        return removed

    def _own_folders(self) -> list[Path]:
        """iqadef's folders, deepest first (``cache/adv/ab`` before ``cache/adv`` before ``cache``)."""
        adv = self.path / "cache" / "adv"
        shards = sorted(p for p in adv.iterdir() if re.fullmatch(r"[0-9a-f]{2}", p.name)) if adv.is_dir() else []
        return [p for p in shards if p.is_dir() and not p.is_symlink()] + [self.path / f for f in OWN_FOLDERS]

    def remove_stale_temp_files(self) -> int:
        """Temporary files of iqadef processes that are gone (a killed run); nothing else. Returns the count."""
        return remove_stale_temp_files([self.path, *self._own_folders()], older_names=True)


def remove_stale_temp_files(folders: Iterable[Path], *, older_names: bool = False) -> int:
    """Delete, directly in each of ``folders``, the temporary files (:func:`temp_prefix`) of iqadef processes
    that are gone, and with ``older_names`` those of earlier versions (a run folder's own names). Symbolic
    links and what they point to are never touched. Returns the count."""
    removed = 0
    for folder in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            if is_stale_temp(entry.name, older_names=older_names) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def is_stale_temp(name: str, *, older_names: bool = True) -> bool:
    """``name`` is a temporary file of an iqadef process no longer alive (or, with ``older_names``, a
    temporary name of an earlier version for a file a run folder holds)."""
    found = _TEMP.match(name)
    if found:
        return not _alive(int(found["pid"]))
    old = _OLD_TEMP.match(name) if older_names else None
    return old is not None and (
        old["name"] in FIXED_NAMES or old["name"] == MARKER or bool(_OWN_NAME.match(old["name"]))
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before this call: nothing of this process is in flight during a sweep
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _write_error(exc: OSError, path: Path) -> IqadefError:
    return write_error(exc, path)


def _is_home_or_root(path: Path) -> str | None:
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the root folder"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):
        return None
    return "your home folder" if resolved == home else None


def prepare_run_dir(output: Path) -> RunFolder:
    """Check that ``output`` may hold a run, create it and its marker; returns its :class:`RunFolder`.

    Refused, with one line naming the folder: ``/``, the home folder, a file, an existing non-empty folder
    that is not an iqadef run folder, and a folder that cannot be written.
    """
    output = Path(output)
    what = _is_home_or_root(output)
    if what:
        raise _refuse(
            f"{output} is {what}; a run writes and deletes files in its folder, so give it a folder "
            f"of its own (e.g. runs/NAME)"
        )
    if output.exists() and not output.is_dir():
        raise _refuse(f"{output} exists and is not a folder; choose another `output`")
    folder = RunFolder(output)
    if output.is_dir() and not folder.is_run_folder():
        try:
            entries = [e for e in os.listdir(output) if e != LOCK]
        except OSError as exc:
            raise _refuse(f"cannot read {output} ({exc.strerror or exc}); choose another `output`") from None
        if entries:
            raise _refuse(
                f"{output} is not empty and is not an iqadef run folder (no {MARKER}, results.sqlite or "
                f"run.json); choose a new or empty folder, so that no file of yours is overwritten"
            )
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f"{temp_prefix()}probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _write_error(exc, output) from None
        raise _refuse(f"cannot write to {output} ({exc.strerror or exc}); choose another `output`") from None
    folder.adopt()
    return folder


__all__ = [
    "FIXED_NAMES",
    "MARKER",
    "RunFolder",
    "is_stale_temp",
    "prepare_run_dir",
    "remove_stale_temp_files",
    "temp_prefix",
]
