"""The run folder's files as the report sees them: the result table it reads, the files it writes.

Every file is written to a temporary name and renamed (:func:`~iqadef.store.results.atomic_write_bytes`: a
full disk leaves the previous report whole and says so) and listed in the run folder's manifest
(:mod:`iqadef.store.rundir`) before it is written. An image that cannot be read (a truncated example) is
remembered, shown as missing and named in the report's notes; the report is still written.
"""

from __future__ import annotations

import json
import warnings
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
    shows; an unreadable image is remembered and warned about once, and :meth:`unreadable_note` names it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
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
