"""Files iqadef writes: whole or not at all, under temporary names that say whose they are.

One owner for atomic writes (the run folder's marker, the store's cached images, reports, exports, trained
weights, a dataset's fetch record all use :func:`atomic_write_bytes`) and for the one-line error a failed
write becomes (:func:`write_error`: a full disk says so and what to do). A leaf: the store and the run
folder both build on it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from iqadef.core.errors import IqadefError

RESUME_ADVICE = "free space and run again with --resume (finished cells are kept)"


class DiskFullError(IqadefError):
    """Writing to the run directory failed for lack of space."""


def temp_prefix() -> str:
    """Prefix of this process's temporary files (``atomic_write_bytes``): iqadef's, and whose."""
    return f".iqadef-tmp-{os.getpid()}-"


def write_error(exc: BaseException, path: Path, advice: str = RESUME_ADVICE) -> IqadefError:
    """One line for a failed write: disk full (with ``advice``), else the OS's reason."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{path}: disk full while writing; {advice}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return IqadefError(f"{path}: cannot write: {reason}")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``); else
    set and restored at once (``os.umask`` has no read-only form)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, advice: str = RESUME_ADVICE) -> str:
    """Write ``data`` to ``path`` via a temporary file + rename; return its sha256.

    The temporary name (``.iqadef-tmp-<pid>-*.tmp``, :func:`temp_prefix`) says that iqadef made it and which
    process, so a resume sweeps only its own leftovers (store/rundir.py). On a full disk the error says so and
    gives ``advice``.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a file iqadef writes follows the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path, advice) from None
    return hashlib.sha256(data).hexdigest()
