"""The result store: SQLite in the run directory, one row per finished grid cell.

Rows of one work unit are written in one transaction, so a run killed at any moment (even SIGKILL)
resumes with no cell lost or duplicated (the primary key forbids duplicates). Cached files (the
adversarial PNGs) are written to a temporary name and renamed, and their sha256 is recorded here, so
a half-written or corrupted file is detected and recomputed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .errors import IqadefError, RunLockedError

CELL_COLUMNS = (
    "metric_key", "attack_key", "defence_key", "image",
    "metric", "attack", "defence", "metric_params", "attack_params", "defence_params", "adaptive",
    "image_path", "status", "error", "f_clean", "f_adv", "f_def_clean", "f_def_adv", "mos",
    "adv_path", "example_path", "scores", "unit",
)
KEY_COLUMNS = ("metric_key", "attack_key", "defence_key", "image")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cells (
    {", ".join(c + (" REAL" if c.startswith("f_") or c == "mos" else " TEXT") for c in CELL_COLUMNS)},
    PRIMARY KEY ({", ".join(KEY_COLUMNS)})
);
CREATE TABLE IF NOT EXISTS artifacts (key TEXT PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DiskFullError(IqadefError):
    """Writing to the run directory failed for lack of space."""


def _storage_error(exc: BaseException, path: Path) -> IqadefError:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: disk full while writing; free space and run again with --resume "
                             f"(finished cells are kept)")
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return DiskFullError(f"{path}: disk full while writing the result store; free space and run again "
                             f"with --resume (finished cells are kept)")
    return IqadefError(f"{path}: cannot write: {exc}")


class RunLock:
    """An exclusive lock on a run directory, so two processes never write the same store."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(f"{self.path.parent}: another iqadef process is running in this run directory; "
                                 f"wait for it to finish or use another `output`") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` via a temporary file + rename; return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _storage_error(exc, path) from None
    return hashlib.sha256(data).hexdigest()


class ResultStore:
    """SQLite store of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.sqlite"
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IqadefError(f"{self.path}: not a usable result store ({exc}); move it away or run with --fresh") from None

    def close(self) -> None:
        self.db.close()

    # -- cells ----------------------------------------------------------------------------------
    def finished(self) -> set[tuple[str, str, str, str]]:
        """Keys of cells finished successfully (failed cells are retried on resume)."""
        rows = self.db.execute(f"SELECT {', '.join(KEY_COLUMNS)} FROM cells WHERE status = 'ok'")
        return {tuple(r) for r in rows}

    def write_cells(self, rows: Iterable[dict[str, Any]], artifacts: Iterable[tuple[str, str, str]] = ()) -> None:
        """Insert (or replace failed) rows and artifact records in one transaction."""
        rows = list(rows)
        placeholders = ", ".join("?" for _ in CELL_COLUMNS)
        values = [tuple(_cell_value(r.get(c)) for c in CELL_COLUMNS) for r in rows]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT OR REPLACE INTO artifacts (key, path, sha256) VALUES (?, ?, ?)",
                                    list(artifacts))
                self.db.executemany(f"INSERT OR REPLACE INTO cells ({', '.join(CELL_COLUMNS)}) "
                                    f"VALUES ({placeholders})", values)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except (sqlite3.OperationalError, OSError) as exc:
            raise _storage_error(exc, self.path) from None

    def artifact(self, key: str) -> tuple[str, str] | None:
        row = self.db.execute("SELECT path, sha256 FROM artifacts WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def dataframe(self) -> pd.DataFrame:
        """All cells, one row each, with the per-image score columns spread out, in a stable order."""
        df = pd.read_sql_query(f"SELECT {', '.join(CELL_COLUMNS)} FROM cells", self.db)
        scores = pd.DataFrame([json.loads(s) if s else {} for s in df.pop("scores")], index=df.index)
        df = pd.concat([df, scores], axis=1)
        df = df.sort_values(["metric", "attack", "defence", "image"], kind="stable").reset_index(drop=True)
        return df.drop(columns=["unit"])


def _cell_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def export_tables(df: pd.DataFrame, run_dir: Path) -> dict[str, Path]:
    """Write ``results.parquet`` and ``results.csv`` (temp file + rename, so never half written)."""
    out = {}
    for name, writer in (("results.parquet", lambda p: df.to_parquet(p, index=False)),
                         ("results.csv", lambda p: df.to_csv(p, index=False))):
        target = run_dir / name
        tmp = run_dir / f".{name}.tmp"
        try:
            writer(tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _storage_error(exc, target) from None
        out[name] = target
    return out
