"""The run folder's files as the report sees them: the result table it reads, the files it writes.

Every file is written to a temporary name and renamed (:func:`~iqadef.store.results.atomic_write_bytes`: a
full disk leaves the previous report whole and says so) and listed in the run folder's manifest
(:mod:`iqadef.store.rundir`) before it is written. An image that cannot be read (a truncated example) is
remembered, shown as missing and named in the report's notes; the report is still written.
"""

from __future__ import annotations

import json
import os
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from iqadef.core.errors import ConfigError, IqadefError
from iqadef.store.results import StorageWarning, atomic_write_bytes
from iqadef.store.rundir import RunFolder

#: Text columns: read back as str ("" for missing), whatever pandas guessed from a CSV.
TEXT_COLUMNS = ("image", "metric", "attack", "defence", "status", "error", "adv_path", "example_path", "image_path")
#: How many unreadable images the note names one by one.
MAX_NAMED_UNREADABLE = 10
#: Background renders at a time (:meth:`ReportFiles.write_rendered`): the parent and two children keep two
#: cores busy while the parent builds the next figure.
BACKGROUND_CHILDREN = 2


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
        raise IqadefError(
            f"{table}: cannot be read ({first_line(exc)}); run the registry again to export it anew from results.sqlite"
        ) from None
    info_path = run_dir / "run.json"
    try:
        run_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    except (OSError, ValueError) as exc:
        raise IqadefError(
            f"{info_path}: cannot be read ({first_line(exc)}); run the registry again to write it anew"
        ) from None
    for col in TEXT_COLUMNS:
        if col in df.columns:
            df[col] = [("" if pd.isna(v) else str(v)) for v in df[col]]
    return df, run_info


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ReportFiles:
    """Writes the report's files (temporary name + rename, listed in the manifest) and reads the images it
    shows; an unreadable image is remembered and warned about once, and :meth:`unreadable_note` names it.

    With ``background`` (where the platform forks), :meth:`write_rendered` renders a file in a child process
    while the caller goes on; :meth:`settle` writes what the children rendered. Rendering the figures' PNGs
    (matplotlib's Agg draw) is most of a report's figure time, and the parent builds the next figure meanwhile.
    """

    def __init__(self, run_dir: Path, background: bool = False):
        self.run_dir = run_dir
        self.background = background and hasattr(os, "fork")
        self._pending: list[tuple[Path, Callable[[], bytes], int, int]] = []  # path, render, child pid, pipe
        weakref.finalize(self, _abandon, self._pending)  # a report that failed midway leaves no child behind
        self.folder = RunFolder(run_dir)
        if self.folder.is_run_folder():
            self.folder.adopt()  # a folder of an older version: list the report's files from now on
        self.advice = (
            f"the results are kept (results.sqlite, results.parquet, results.csv); free space and "
            f"run `iqadef report {run_dir}` to write the report again"
        )
        self.unreadable: dict[str, str] = {}

    def write(self, path: Path, data: bytes) -> Path:
        self.folder.record([path.relative_to(self.run_dir).as_posix()])
        atomic_write_bytes(path, data, advice=self.advice)
        return path

    def write_rendered(self, path: Path, render: Callable[[], bytes]) -> Path:
        """Write the bytes ``render()`` returns to ``path``: at once, or with ``background`` in a forked child
        (at most :data:`BACKGROUND_CHILDREN` at a time) and written by :meth:`settle`. The path is listed in the
        manifest now, so the manifest's order is the calls' order either way."""
        if not self.background:
            return self.write(path, render())
        while len(self._pending) >= BACKGROUND_CHILDREN:
            self._settle_first()
        self.folder.record([path.relative_to(self.run_dir).as_posix()])
        self._pending.append((path, render, *_render_in_child(render)))
        return path

    def settle(self) -> None:
        """Wait for the background renders and write their files, in the order they were asked for. A child
        that failed is rendered again here (so its error, if any, is raised here)."""
        while self._pending:
            self._settle_first()

    def abandon(self) -> None:
        """Stop the background renders and write nothing (the report failed before it needed them)."""
        _abandon(self._pending)

    def _settle_first(self) -> None:
        path, render, pid, pipe = self._pending.pop(0)
        with os.fdopen(pipe, "rb") as out:
            data = out.read()
        _, status = os.waitpid(pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            data = render()
        atomic_write_bytes(path, data, advice=self.advice)

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
                self.unreadable[str(path)] = first_line(exc)
                warnings.warn(
                    f"{path}: cannot be read ({first_line(exc)}); shown as missing in the report",
                    StorageWarning,
                    stacklevel=2,
                )
            return None

    def unreadable_note(self) -> str | None:
        """The note naming the images that could not be read, or None when every one was read."""
        if not self.unreadable:
            return None
        shown = list(self.unreadable.items())[:MAX_NAMED_UNREADABLE]
        names = "; ".join(f"{p} ({why})" for p, why in shown)
        more = (
            f" and {len(self.unreadable) - MAX_NAMED_UNREADABLE} more"
            if len(self.unreadable) > MAX_NAMED_UNREADABLE
            else ""
        )
        return (
            f"{len(self.unreadable)} image file(s) could not be read and are shown as missing: "
            f"{names}{more}. Running the registry again (resume) writes unreadable example "
            f"images anew; then run `iqadef report` again."
        )


def _abandon(pending: list[tuple[Path, Callable[[], bytes], int, int]]) -> None:
    """Close the pipes (a child still sending gets a broken pipe and exits) and reap the children."""
    while pending:
        _, _, pid, pipe = pending.pop(0)
        os.close(pipe)
        os.waitpid(pid, 0)


def _render_in_child(render: Callable[[], bytes]) -> tuple[int, int]:
    """Fork a child that sends ``render()``'s bytes down a pipe and exits (exit 1 on any error, nothing sent);
    returns the child's pid and the pipe's read end."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: forking with threads (pyarrow's pool)
        pid = os.fork()
    if pid == 0:  # the child: render, send, and leave without running the parent's cleanup or flushing its output
        code = 1
        try:
            os.close(read_end)
            data = render()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end
