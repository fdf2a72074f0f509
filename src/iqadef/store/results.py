"""The result store: SQLite in the run directory, one row per finished grid cell.

Rows of one work unit are written in one transaction, so a run killed at any moment (even SIGKILL)
resumes with no cell lost or duplicated (the primary key forbids duplicates). Cached files (the
adversarial PNGs) are written to a temporary name and renamed, and their sha256 is recorded here, so
a half-written or corrupted file is detected and recomputed.

Each row carries a checksum of its stored values (:func:`row_checksum`, over every column of
:data:`CELL_COLUMNS`), so a value changed after it was written (a flipped bit, an edit by hand) is seen:
a resume recomputes such a cell, the export marks it failed and says so. A damaged database file and a
full disk are reported in one line that names the file and what to do (:class:`CorruptStoreError`,
:class:`DiskFullError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import sqlite3
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from iqadef.core.errors import IqadefError, RunLockedError
from iqadef.core.files import RESUME_ADVICE, DiskFullError, atomic_write_bytes, write_error

CELL_COLUMNS = (
    "metric_key",
    "attack_key",
    "defence_key",
    "image",
    "metric",
    "attack",
    "defence",
    "metric_params",
    "attack_params",
    "defence_params",
    "adaptive",
    "image_path",
    "image_sha256",
    "batch_key",
    "status",
    "error",
    "f_clean",
    "f_adv",
    "f_def_clean",
    "f_def_adv",
    "mos",
    "queries",
    "adv_path",
    "example_path",
    "scores",
    "unit",
)
KEY_COLUMNS = ("metric_key", "attack_key", "defence_key", "image")
#: What a cell was computed from besides its plugins: the image file's sha256 and its batch (the runner's
#: ``batch_keys``). A stored cell counts as done only while both still hold (runner.GridIndex).
IDENTITY_COLUMNS = (*KEY_COLUMNS, "image_sha256", "batch_key")


def _is_real(column: str) -> bool:
    return column.startswith("f_") or column in ("mos", "queries")


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cells (
    {", ".join(c + (" REAL" if _is_real(c) else " TEXT") for c in CELL_COLUMNS)}, checksum TEXT,
    PRIMARY KEY ({", ".join(KEY_COLUMNS)})
);
CREATE TABLE IF NOT EXISTS artifacts (key TEXT PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: A disk with less free space than this, when SQLite says "disk I/O error", is a full disk.
_NEARLY_FULL = 1 << 20
CHECKSUM_ERROR = "stored values fail their checksum (changed after they were written)"


class CorruptStoreError(IqadefError):
    """``results.sqlite`` is damaged: SQLite cannot read it."""


class StorageWarning(UserWarning):
    """Something in the run folder was damaged and is being repaired (the CLI prints it as one line)."""


def _nearly_full(path: Path) -> bool:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < _NEARLY_FULL
    return False


def _storage_error(exc: BaseException, path: Path, advice: str = RESUME_ADVICE) -> IqadefError:
    """One line for a failed write: disk full (with ``advice``), a damaged store, or the OS's reason."""
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc).lower()
        if "full" in text or ("disk i/o error" in text and _nearly_full(path)):
            return DiskFullError(f"{path}: disk full while writing the result store; {advice}")
        if not isinstance(exc, sqlite3.OperationalError) or any(
            sign in text for sign in ("malformed", "not a database", "corrupt", "no such", "decode")
        ):
            return corrupt_store_error(path, exc)
    return write_error(exc, path, advice)


def corrupt_store_error(path: Path, exc: BaseException) -> CorruptStoreError:
    text = " ".join(str(exc).replace("*** in database main ***", "").split(" with text ")[0].split())
    reason = "".join(c if c.isprintable() else "?" for c in text)[:120]
    return CorruptStoreError(
        f"{path}: the result store is damaged ({reason}); move it aside together with its -wal/-shm files "
        f"(e.g. rename it to {path.name}.damaged) or use --fresh, then run again: its cells are recomputed "
        f'(`sqlite3 {path} "PRAGMA integrity_check"` shows the damage)'
    )


class RunLock:
    """An exclusive lock on a run directory, so two processes never write the same store.

    ``shared=True``: a reader's lock (``iqadef export``), held with other readers but never while a run
    writes, so a reader never takes a run's half-written state for its result. A folder where the lock file
    can be neither opened nor created (read-only) cannot be written by a run either: it is read unlocked.
    """

    def __init__(self, run_dir: Path, *, shared: bool = False):
        self.path = Path(run_dir) / ".lock"
        self.shared = shared
        self._fd: int | None = None

    def _open(self) -> int | None:
        if not self.shared:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT):
            try:
                return os.open(self.path, flags, 0o644)
            except OSError:
                continue
        return None

    def __enter__(self) -> "RunLock":
        self._fd = self._open()
        if self._fd is None:
            return self
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            if self.shared:
                raise RunLockedError(
                    f"{self.path.parent}: an iqadef run is writing this run folder; wait for it "
                    f"to finish, then try again"
                ) from None
            raise RunLockedError(
                f"{self.path.parent}: another iqadef process is running in this run directory; "
                f"wait for it to finish or use another `output`"
            ) from None
        if not self.shared:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _stored(column: str, value: Any) -> Any:
    """``value`` as SQLite stores and returns it in ``column`` (REAL: float or NULL for NaN; TEXT: str)."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    if value is None:
        return None
    if _is_real(column):
        value = float(value)
        return None if math.isnan(value) else value + 0.0  # SQLite reads -0.0 back as 0.0
    return value if isinstance(value, str) else str(value)


def row_checksum(values: Mapping[str, Any]) -> str:
    """Checksum of one stored row: every non-NULL column by name, each value's exact ``repr``.

    Columns are taken by name and NULLs left out, so a column added to :data:`CELL_COLUMNS` later (NULL in
    older rows) keeps older rows' checksums valid. ``repr`` is exact for floats and unambiguous for text.
    """
    blob = "\x1e".join(f"{c}\x1f{v!r}" for c, v in sorted(values.items()) if v is not None)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def stored_form(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` (:data:`CELL_COLUMNS`) as the store holds it: what a freshly computed row is compared to."""
    return {c: _stored(c, row.get(c)) for c in CELL_COLUMNS}


def _select_cells(db: sqlite3.Connection) -> tuple[list[str], list[tuple], list[bool]]:
    """Every row of ``cells`` (the :data:`CELL_COLUMNS` the table has, in order) and whether its checksum holds."""
    present = {row[1] for row in db.execute("PRAGMA table_info(cells)")}
    columns = [c for c in CELL_COLUMNS if c in present]
    rows = db.execute(f"SELECT {', '.join(columns)}, checksum FROM cells").fetchall()
    intact = [row[-1] == row_checksum(dict(zip(columns, row[:-1]))) for row in rows]
    return columns, [row[:-1] for row in rows], intact


def _readable_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()  # reads every chunk and checks its CRC, without decoding
        return True
    except Exception:  # noqa: BLE001 - truncated, corrupt, missing: all mean "write it again"
        return False


class ResultStore:
    """SQLite store of one run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.sqlite"
        with self._errors(advice="free space and run again"):
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # a damaged text value reads as text (with U+FFFD) and then fails its row's checksum: recomputed
            self.db.text_factory = lambda raw: raw.decode("utf-8", "replace")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self._check_structure()
            self._add_missing_columns()
            self._add_checksums_to_an_old_store()

    @contextlib.contextmanager
    def _errors(self, advice: str = RESUME_ADVICE) -> Iterator[None]:
        """SQLite's and the OS's errors as one line naming the store (damaged file, full disk)."""
        try:
            yield
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _storage_error(exc, self.path, advice) from None

    def _check_structure(self) -> None:
        """``PRAGMA quick_check``: a damaged page anywhere (an index, a free page) is found now, with a clear
        message, not later in the middle of a run; values inside intact pages are the checksums' job."""
        verdict = self.db.execute("PRAGMA quick_check(1)").fetchone()
        if verdict is None or verdict[0] != "ok":
            raise corrupt_store_error(self.path, sqlite3.DatabaseError(verdict[0] if verdict else "no answer"))

    def _add_missing_columns(self) -> None:
        """A store from an older iqadef lacks newer columns (``image_sha256``, ``batch_key``): added as NULL,
        so its cells count as not done (nothing records what they were computed from) and are recomputed."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(cells)")}
        for column in CELL_COLUMNS:
            if column not in columns:
                self.db.execute(f"ALTER TABLE cells ADD COLUMN {column} {'REAL' if _is_real(column) else 'TEXT'}")

    def _add_checksums_to_an_old_store(self) -> None:
        """Stores written before checksums existed get the column; their rows are sealed as they are now
        (nothing can tell whether they changed before), and the meta table records how many."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(cells)")}
        if "checksum" in columns:
            return
        present = [c for c in CELL_COLUMNS if c in columns]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE cells ADD COLUMN checksum TEXT")
            rows = self.db.execute(f"SELECT rowid, {', '.join(present)} FROM cells").fetchall()
            self.db.executemany(
                "UPDATE cells SET checksum = ? WHERE rowid = ?",
                [(row_checksum(dict(zip(present, r[1:]))), r[0]) for r in rows],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                ("checksums_added_to_rows", json.dumps(len(rows))),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    # -- cells ----------------------------------------------------------------------------------
    def _rows(self) -> tuple[list[str], list[tuple], list[bool]]:
        """Every stored row (CELL_COLUMNS in order) and whether its checksum holds."""
        with self._errors():
            return _select_cells(self.db)

    def finished(self) -> set[tuple[str, ...]]:
        """:data:`IDENTITY_COLUMNS` of cells finished successfully and intact; the others are (re)computed
        on resume.

        Failed cells, cells whose checksum fails and cells whose example image is missing or unreadable
        (truncated, corrupt) are left out, so a resume recomputes them; the last two with a warning.
        """
        columns, rows, intact = self._rows()
        at = {
            c: columns.index(c)
            for c in (*IDENTITY_COLUMNS, "status", "example_path", "metric", "attack", "defence", "image")
        }
        keys = lambda row: tuple(row[at[c]] for c in IDENTITY_COLUMNS)  # noqa: E731
        changed = [row for row, ok in zip(rows, intact) if not ok]
        done = [row for row, ok in zip(rows, intact) if ok and row[at["status"]] == "ok"]
        readable: dict[str, bool] = {}
        for row in done:
            rel = row[at["example_path"]]
            if rel and rel not in readable:
                readable[rel] = _readable_png(self.run_dir / rel)
        damaged = sorted(rel for rel, ok in readable.items() if not ok)
        if changed:
            warnings.warn(
                f"{self.path}: {len(changed)} stored cell(s) fail their checksum (changed after they "
                f"were written) and are recomputed: {_cells(changed, at)}",
                StorageWarning,
                stacklevel=2,
            )
        if damaged:
            warnings.warn(
                f"{self.run_dir}: {len(damaged)} example image(s) missing or unreadable (e.g. "
                f"{', '.join(damaged[:3])}); their cells are recomputed to write them again",
                StorageWarning,
                stacklevel=2,
            )
        return {keys(row) for row in done if not (row[at["example_path"]] and not readable[row[at["example_path"]]])}

    def write_cells(self, rows: Iterable[dict[str, Any]], artifacts: Iterable[tuple[str, str, str]] = ()) -> None:
        """Insert (or replace failed) rows, each with its checksum, and artifact records in one transaction."""
        values = []
        for r in rows:
            stored = stored_form(r)
            values.append((*stored.values(), row_checksum(stored)))
        placeholders = ", ".join("?" for _ in range(len(CELL_COLUMNS) + 1))
        with self._errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT OR REPLACE INTO artifacts (key, path, sha256) VALUES (?, ?, ?)", list(artifacts)
                )
                self.db.executemany(
                    f"INSERT OR REPLACE INTO cells ({', '.join(CELL_COLUMNS)}, checksum) VALUES ({placeholders})",
                    values,
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def intact_rows(self, keys: set[tuple[str, ...]]) -> list[dict[str, Any]]:
        """The stored rows (column -> value) whose :data:`KEY_COLUMNS` are in ``keys`` and whose checksum
        holds; the runner copies such rows to a renamed image's name instead of recomputing them."""
        columns, rows, intact = self._rows()
        at = [columns.index(c) for c in KEY_COLUMNS]
        return [dict(zip(columns, row)) for row, ok in zip(rows, intact) if ok and tuple(row[i] for i in at) in keys]

    def artifact(self, key: str) -> tuple[str, str] | None:
        with self._errors():
            row = self.db.execute("SELECT path, sha256 FROM artifacts WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._errors():
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._errors():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def dataframe(self) -> pd.DataFrame:
        """All cells, one row each, with the per-image score columns spread out, in a stable order.

        A row whose checksum fails is exported as failed (``status`` failed, the reason in ``error``), so a
        changed value never reaches a table as ok; a resume recomputes it.
        """
        columns, rows, intact = self._rows()
        df = pd.DataFrame.from_records(rows, columns=columns, coerce_float=True)  # as pd.read_sql_query
        if not all(intact):
            bad = [not ok for ok in intact]
            at = {c: columns.index(c) for c in ("metric", "attack", "defence", "image")}
            warnings.warn(
                f"{self.path}: {sum(bad)} stored cell(s) fail their checksum and are exported as failed: "
                f"{_cells([r for r, b in zip(rows, bad) if b], at)}; run the registry again (resume) to "
                f"recompute them",
                StorageWarning,
                stacklevel=2,
            )
            df.loc[bad, "status"] = "failed"
            df.loc[bad, "error"] = f"{CHECKSUM_ERROR}; run the registry again (resume) to recompute it"
        scores = pd.DataFrame([json.loads(s) if s else {} for s in df.pop("scores")], index=df.index)
        df = pd.concat([df, scores], axis=1)
        df = df.sort_values(["metric", "attack", "defence", "image"], kind="stable").reset_index(drop=True)
        return df.drop(columns=["unit"])


@dataclass
class StoredCells:
    """What :func:`read_cells` found in a run's store, read at one moment."""

    #: Every stored row, column -> value as stored (parameters and scores as JSON text).
    rows: list[dict[str, Any]]
    #: Per row: whether its checksum holds (a row that fails it changed after it was written).
    intact: list[bool]
    #: The cached files: artifact key -> (path relative to the run folder, sha256 recorded when written).
    artifacts: dict[str, tuple[str, str]]

    def usable(self) -> list[dict[str, Any]]:
        """The successful rows whose checksum holds: what a table may show as ok (``dataframe``'s rule)."""
        return [row for row, ok in zip(self.rows, self.intact) if ok and row.get("status") == "ok"]

    def sha256_of(self) -> dict[str, str]:
        """Recorded sha256 per cached file (relative path)."""
        return {path: sha for path, sha in self.artifacts.values()}


def read_cells(run_dir: Path) -> StoredCells:
    """The rows and artifact records of ``run_dir``'s store, read-only (nothing is created or repaired).

    The one reader for tools that inspect a finished run (``iqadef export``, ``iqadef verify``): both
    tables are read in one transaction, and each row comes with whether its checksum holds, as
    :meth:`ResultStore.dataframe` judges it. A missing or damaged store is one line (:class:`IqadefError`).
    """
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        raise IqadefError(f"{path}: no result store; run `iqadef run` first")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            con.text_factory = lambda raw: raw.decode("utf-8", "replace")  # as ResultStore: fails its checksum
            con.execute("BEGIN")  # one snapshot of both tables
            columns, rows, intact = _select_cells(con)
            artifacts = {k: (p, s) for k, p, s in con.execute("SELECT key, path, sha256 FROM artifacts")}
            con.execute("COMMIT")
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and any(
            sign in str(exc).lower() for sign in ("locked", "unable to open", "readonly", "busy")
        ):
            raise IqadefError(f"{path}: cannot be read ({exc})") from None
        raise corrupt_store_error(path, exc) from None
    return StoredCells([dict(zip(columns, row)) for row in rows], intact, artifacts)


def _cells(rows: list[tuple], at: Mapping[str, int], limit: int = 5) -> str:
    """``metric / attack / defence / image`` of the first ``limit`` rows, for a message."""
    names = [" / ".join(str(row[at[c]]) for c in ("metric", "attack", "defence", "image")) for row in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return "; ".join(names) + more


def export_tables(df: pd.DataFrame, run_dir: Path) -> dict[str, Path]:
    """Write ``results.parquet`` and ``results.csv`` (temp file + rename, so never half written)."""
    out = {}
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    for name, data in (("results.parquet", buffer.getvalue()), ("results.csv", df.to_csv(index=False).encode())):
        target = run_dir / name
        atomic_write_bytes(target, data)
        out[name] = target
    return out


# -- read-only access for other threads and for the run folder -------------------------------------------
def _read_only(db: Path, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


def listed_files(db: Path) -> set[str]:
    """Cache and example paths the result store ``db`` lists (read-only; a damaged store lists nothing): files
    of the run folder that iqadef wrote (rundir's ``--fresh``)."""
    if not db.is_file():
        return set()
    paths: set[str] = set()
    try:
        con = _read_only(db, timeout=5)
        try:
            for (rel,) in con.execute("SELECT path FROM artifacts"):
                paths.add(str(rel))
            for (rel,) in con.execute("SELECT DISTINCT example_path FROM cells WHERE example_path != ''"):
                paths.add(str(rel))
        finally:
            con.close()
    except sqlite3.Error:
        pass
    return {p for p in paths if p and p != "None"}


def artifact_table(run_dir: Path) -> dict[str, tuple[str, str]]:
    """The store's artifact table (key -> (relative path, sha256)) as it is now; empty without a store."""
    path = Path(run_dir) / "results.sqlite"
    if not path.exists():
        return {}
    con = _read_only(path, timeout=30)
    try:
        return {k: (p, s) for k, p, s in con.execute("SELECT key, path, sha256 FROM artifacts")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


class ArtifactReader:
    """``ResultStore.artifact`` for the unit thread: its own read-only connection to ``results.sqlite``
    (a SQLite connection belongs to the thread that opened it). A read error counts as a cache miss."""

    def __init__(self, path: Path):
        self.uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        self._db: sqlite3.Connection | None = None

    @classmethod
    def of_run(cls, run_dir: Path) -> "ArtifactReader":
        """The reader of run folder ``run_dir``'s store."""
        return cls(Path(run_dir) / "results.sqlite")

    def __call__(self, key: str) -> tuple[str, str] | None:
        try:
            if self._db is None:
                self._db = sqlite3.connect(self.uri, uri=True, timeout=30, check_same_thread=False)
            row = self._db.execute("SELECT path, sha256 FROM artifacts WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return (row[0], row[1]) if row else None
