"""One downloader for everything iqadef fetches (model weights, dataset archives): resumable, checksummed,
offline-aware, and safe to extract.

* :func:`download` writes to ``.<name>.part`` beside the target and renames it into place only once it is
  complete and verified, so the real name never holds half a file. An interrupted transfer keeps the
  ``.part`` file; the next attempt asks the server for the rest (HTTP ``Range``) and appends to it, or
  starts over when the server does not offer ranges. A file whose sha256 or size differs from what is
  pinned is deleted and refused, naming both values. Two processes fetching the same file take turns
  (an ``flock`` on the ``.part`` file).
* ``IQADEF_OFFLINE=1`` forbids downloads (:func:`offline`): :func:`fetch` refuses; callers of the lower-level
  :func:`download` check it themselves (``iqadef weights fetch`` asks for a download explicitly).
* :func:`extract` unpacks zip and tar archives refusing any member that would land outside the target
  folder (absolute paths, ``..``, links pointing out, device files), via tarfile's ``data`` filter and
  the same checks for zip members.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from .errors import IqadefError

_CHUNK = 1 << 20
#: Archive kinds :func:`extract` understands (``None``: a plain file, not unpacked).
ARCHIVES = ("zip", "tar", "tar.gz", "tgz", "tar.bz2", "tar.xz")


class FetchError(IqadefError):
    """A download or an extraction failed, or its result was refused (checksum, size, unsafe archive)."""


class Interrupted(FetchError):
    """The transfer stopped before the end; the ``.part`` file is kept so the next attempt resumes."""


@dataclass(frozen=True)
class RemoteFile:
    """A file somewhere on the web: where it comes from, what it must be, and what to do with it.

    ``sha256`` may be a prefix (at least 8 hex digits) or None when the publisher gives none; ``size`` (bytes)
    is checked when known. ``archive`` (one of :data:`ARCHIVES`) says it is unpacked after download; None
    keeps it as a file. ``manual`` marks a file that has no direct URL (a login or a form is needed): fetch
    tells where to get it and where to put it instead of downloading.
    """

    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None
    archive: str | None = None
    description: str = ""
    manual: str = ""

    def __post_init__(self) -> None:
        if self.archive is not None and self.archive not in ARCHIVES:
            raise ValueError(f"{self.filename}: archive {self.archive!r} is not one of {', '.join(ARCHIVES)}")
        if "/" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"{self.filename!r}: a remote file's name must be a plain file name")


def offline() -> bool:
    """``IQADEF_OFFLINE`` set to 1/true/yes/on: nothing is downloaded."""
    return os.environ.get("IQADEF_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def matches(actual: str, pinned: str | None) -> bool:
    """``actual`` agrees with ``pinned`` (a full sha256 or a prefix of it); anything matches no pin."""
    return pinned is None or actual.lower().startswith(pinned.lower())


def part_path(target: Path) -> Path:
    """Where the unfinished download of ``target`` is kept (beside it, so the final rename is atomic)."""
    return target.parent / f".{target.name}.part"


def _size(n: int | None) -> str:
    if n is None:
        return "? bytes"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "iqadef", "Accept-Encoding": "identity"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs are the plugins' own


def _resume_offset(response, start: int) -> int:
    """Bytes of the ``.part`` file to keep: ``start`` when the server sent the rest (206 from ``start``),
    0 when it sent the whole file (200: no range support, or a ``file://`` URL)."""
    if not start:
        return 0
    status = getattr(response, "status", None) or response.getcode()
    content_range = response.headers.get("Content-Range") or ""
    if status == 206 and content_range.startswith(f"bytes {start}-"):
        return start
    return 0


def _total(response, kept: int) -> int | None:
    length = response.headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
        return None
    return kept + int(length)


def download(url: str, target: Path, *, sha256: str | None = None, size: int | None = None,
             progress: bool = True, label: str | None = None, check: Callable[[Path], None] | None = None,
             timeout: float = 60.0, retries: int = 2) -> Path:
    """Download ``url`` to ``target`` (see the module docstring); returns ``target``.

    ``check(part)`` may refuse the finished file (raise an IqadefError): it is then deleted. ``retries``:
    how many times a transfer cut short is resumed within this call before :class:`Interrupted` is raised
    (the ``.part`` is kept either way, for the next call).
    """
    label = label or target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process downloads the same file: wait for it
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, part):  # it finished (renamed its .part) or gave up (deleted it)
                if target.is_file():
                    return target
                os.close(fd)
                fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
        attempt = 0
        while True:
            try:
                _transfer(url, fd, part, size, progress, label, timeout)
                break
            except Interrupted:
                attempt += 1
                if attempt > retries:
                    raise
                time.sleep(min(2.0, 0.2 * attempt))
        try:
            _verify(part, url, label, sha256, size)
            if check is not None:
                check(part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _transfer(url: str, fd: int, part: Path, size: int | None, progress: bool, label: str, timeout: float) -> None:
    """Append the rest of ``url`` to the ``.part`` file (or rewrite it), with a progress bar."""
    start = os.fstat(fd).st_size
    if size is not None and start >= size:
        start = 0  # as long as the whole file already, or longer: it cannot be a prefix worth keeping
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # "range not satisfiable": the part is not a prefix of this file
            os.ftruncate(fd, 0)
            response = _open(url, 0, timeout)
        else:
            raise
    with response:
        kept = _resume_offset(response, start)
        os.ftruncate(fd, kept)
        os.lseek(fd, kept, os.SEEK_SET)
        total = _total(response, kept)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=kept, unit="B", unit_scale=True, desc=label, leave=False)
        written = kept
        try:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as exc:
                    raise Interrupted(_interrupted(url, written, total, part, exc)) from None
                if not block:
                    break
                os.write(fd, block)
                written += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        os.fsync(fd)
    if total is not None and written < total:
        raise Interrupted(_interrupted(url, written, total, part, None))


def _interrupted(url: str, written: int, total: int | None, part: Path, exc: BaseException | None) -> str:
    why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return (f"{url}: the download stopped after {_size(written)} of {_size(total)}{why}; the part is kept in "
            f"{part}: run the same command again to resume it")


def _verify(part: Path, url: str, label: str, sha256: str | None, size: int | None) -> None:
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        raise FetchError(f"{url}: the downloaded file has {actual_size} bytes, {label} should have {size}; "
                         f"nothing was saved. The server may have changed the file: download it by hand and check it")
    if sha256 is not None:
        actual = sha256_of(part)
        if not matches(actual, sha256):
            raise FetchError(f"{url}: the downloaded file's sha256 {actual} does not match the pinned {sha256} for "
                             f"{label}; nothing was saved. The server may have changed the file: download it by "
                             f"hand and check it")


def fetch(remote: RemoteFile, target: Path, *, progress: bool = True, check: Callable[[Path], None] | None = None,
          retries: int = 2) -> Path:
    """Download ``remote`` to ``target`` from the first of its URLs that works."""
    if offline():
        raise FetchError(f"{remote.filename}: downloads are disabled (IQADEF_OFFLINE is set); download it from "
                         f"{', '.join(remote.urls) or remote.manual or '(no URL known)'} and put it at {target}")
    if remote.manual or not remote.urls:
        how = remote.manual or "it has no download URL"
        raise FetchError(f"{remote.filename}: cannot be downloaded automatically ({how}); put it at {target}")
    errors = []
    for url in remote.urls:
        try:
            return download(url, target, sha256=remote.sha256, size=remote.size, progress=progress,
                            label=remote.filename, check=check, retries=retries)
        except Interrupted:
            raise
        except IqadefError:
            raise
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {exc}")
    raise FetchError(f"{remote.filename}: download failed ({'; '.join(errors)})")


# -- extraction ----------------------------------------------------------------------------------------------

def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def extract(archive: Path, dest: Path, kind: str) -> list[str]:
    """Unpack ``archive`` (a :data:`ARCHIVES` kind) into ``dest``; returns the member paths written.

    Members are unpacked into a temporary folder inside ``dest`` and moved into place only when the whole
    archive was read, so a truncated archive or an unsafe member leaves ``dest`` as it was.
    """
    if kind not in ARCHIVES:
        raise FetchError(f"{archive}: unknown archive kind {kind!r}; one of {', '.join(ARCHIVES)}")
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".iqadef-extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if kind == "zip":
            names = _extract_zip(archive, staging)
        else:
            names = _extract_tar(archive, staging)
        for top in sorted(os.listdir(staging)):
            _merge(staging / top, dest / top)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(archive: Path, staging: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                mode = info.external_attr >> 16
                if _unsafe(info.filename):
                    raise FetchError(f"{archive}: member {info.filename!r} would be written outside the data "
                                     f"folder; refused (nothing was extracted)")
                if stat.S_ISLNK(mode):
                    raise FetchError(f"{archive}: member {info.filename!r} is a symbolic link; refused "
                                     f"(nothing was extracted)")
            bad = zf.testzip()
            if bad is not None:
                raise FetchError(f"{archive}: member {bad!r} fails its CRC check; the archive is corrupt: "
                                 f"delete it and fetch again")
            zf.extractall(staging)
            return [m.filename for m in members if not m.is_dir()]
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{archive}: not a readable zip archive ({exc}); delete it and fetch again") from None


def _extract_tar(archive: Path, staging: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if _unsafe(member.name):
                    raise FetchError(f"{archive}: member {member.name!r} would be written outside the data "
                                     f"folder; refused (nothing was extracted)")
            try:
                tf.extractall(staging, filter="data")
            except tarfile.FilterError as exc:
                raise FetchError(f"{archive}: member refused ({exc}); nothing was extracted") from None
            return [m.name for m in members if m.isfile()]
    except (tarfile.ReadError, EOFError) as exc:
        raise FetchError(f"{archive}: not a readable tar archive ({exc}); delete it and fetch again") from None


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; folders are merged, files replaced."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in sorted(os.listdir(src)):
            _merge(src / child, dst / child)
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)
