"""One downloader for everything iqadef fetches (model weights, dataset archives): resumable, checksummed,
offline-aware, and safe to extract.

* :func:`download` writes to ``.<name>.part`` beside the target and renames it into place only once it is
  complete and verified, so the real name never holds half a file. An interrupted transfer keeps the
  ``.part`` file and the validator the server gave it (strong ``ETag``, else ``Last-Modified``, in
  ``.<name>.part.validator``); the next attempt asks for the rest (HTTP ``Range`` with ``If-Range``) and
  appends it only when the server answers ``206`` from exactly that offset for the same version of the
  file; anything else (no validator, a changed file, a range from elsewhere) starts over from byte 0, so
  two versions are never joined. A file whose sha256 or size differs from what is pinned, or whose
  content is not what it should be (``check``: an HTML login page instead of a CSV), is deleted and
  refused, naming both values. Two processes fetching the same file take turns (an ``flock`` on the
  ``.part`` file).
* ``IQADEF_OFFLINE=1`` forbids downloads (:func:`offline`): :func:`fetch` refuses; callers of the lower-level
  :func:`download` check it themselves (``iqadef weights fetch`` asks for a download explicitly).
* :func:`extract` unpacks zip and tar archives refusing any member that would land outside the target
  folder (absolute paths, ``..``, links pointing out, device files), via tarfile's ``data`` filter and
  the same checks for zip members. Every byte is checked before anything is moved into place: each zip
  member's CRC-32, and a compressed tar's whole stream with its trailer (gzip's CRC-32, bzip2's and xz's
  checks), which tarfile alone never reads. An archive that would unpack to more than
  ``IQADEF_UNPACK_MAX_RATIO`` times its size (default 100; unpacked sizes below 64 MB always pass) or
  more than ``IQADEF_UNPACK_MAX_BYTES`` (default 100 GB) is refused, from its declared sizes and again
  from the bytes actually written; ``off`` lifts either limit. Unpacking never deletes anything: a file
  of the archive where the folder has a directory (or the other way round) is refused, naming it.
"""

from __future__ import annotations

import bz2
import errno
import fcntl
import gzip
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal

from iqadef.core.errors import IqadefError

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


def _open(url: str, start: int, timeout: float, validator: str | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": "iqadef", "Accept-Encoding": "identity"})
    if start:
        request.add_header("Range", f"bytes={start}-")
        if validator:
            request.add_header("If-Range", validator)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs are the plugins' own


def validator_path(target: Path) -> Path:
    """Where the validator of ``target``'s ``.part`` file is kept (which version of the file it holds)."""
    return target.parent / f".{target.name}.part.validator"


def _validator_of(response) -> str | None:
    """What identifies the version of the file a response carries, usable in ``If-Range`` (RFC 9110 13.1.5):
    a strong ETag, else Last-Modified; None when the server gives neither (a part of it cannot be resumed)."""
    etag = (response.headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (response.headers.get("Last-Modified") or "").strip() or None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _content_range(response) -> tuple[int, int | None] | None:
    """(first byte, total size or None) of a 206 reply's ``Content-Range``; None when absent or malformed."""
    found = _CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
    if found is None:
        return None
    return int(found.group(1)), None if found.group(3) == "*" else int(found.group(3))


def _status(response) -> int:
    return getattr(response, "status", None) or response.getcode() or 200


def _total(response, kept: int) -> int | None:
    length = response.headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
        return None
    return kept + int(length)


def download(
    url: str,
    target: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    label: str | None = None,
    check: Callable[[Path], None] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
    pinned_by: str = "the pinned",
) -> Path:
    """Download ``url`` to ``target`` (see the module docstring); returns ``target``.

    ``check(part)`` may refuse the finished file (raise an IqadefError): it is then deleted. ``retries``:
    how many times a transfer cut short is resumed within this call before :class:`Interrupted` is raised
    (the ``.part`` is kept either way, for the next call). ``pinned_by`` names where ``sha256`` comes from
    in the refusal (``the pinned``; a dataset's own record of its first fetch says so).
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
        try:
            while True:
                try:
                    _transfer(url, fd, part, validator_path(target), size, progress, label, timeout)
                    break
                except Interrupted:
                    attempt += 1
                    if attempt > retries:
                        raise
                    time.sleep(min(2.0, 0.2 * attempt))
        except Interrupted:
            raise
        except BaseException:
            if os.fstat(fd).st_size == 0:  # nothing received (a refused redirect, a 404): leave nothing behind
                _discard(part, target)
            raise
        try:
            _verify(part, url, label, sha256, size, pinned_by)
            if check is not None:
                check(part)
        except BaseException:
            _discard(part, target)
            raise
        os.replace(part, target)
        validator_path(target).unlink(missing_ok=True)
        return target
    finally:
        os.close(fd)


def _discard(part: Path, target: Path) -> None:
    part.unlink(missing_ok=True)
    validator_path(target).unlink(missing_ok=True)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_validator(path: Path, url: str) -> tuple[str | None, int | None]:
    """The validator (and total size) recorded when the ``.part`` file was started from ``url``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict) or data.get("url") != url or not isinstance(data.get("validator"), str):
        return None, None
    total = data.get("total")
    return data["validator"], total if isinstance(total, int) else None


def _transfer(
    url: str, fd: int, part: Path, validator_file: Path, size: int | None, progress: bool, label: str, timeout: float
) -> None:
    """Append the rest of ``url`` to the ``.part`` file, or rewrite it from byte 0, with a progress bar.

    The part is resumed only when it is a prefix of the very file the server has now: a validator was
    recorded when it was started, the server honours ``If-Range`` with it (else it sends the whole file,
    200), and its 206 reply starts at the requested offset, for the same version and total size.
    """
    start = os.fstat(fd).st_size
    validator, recorded_total = _read_validator(validator_file, url) if start else (None, None)
    if size is not None and start >= size:
        start = 0  # as long as the whole file already, or longer: it cannot be a prefix worth keeping
    if validator is None:
        start = 0  # which version of the file the part holds is unknown: joining it to the rest could mix two
    try:
        response = _open(url, start, timeout, validator)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # "range not satisfiable": the part is not a prefix of this file
            start = 0
            response = _open(url, 0, timeout)
        else:
            raise
    if start and not _continues(response, start, validator, recorded_total):
        response.close()  # a range from elsewhere, another version, or the whole file: start over
        start = 0
        response = _open(url, 0, timeout)
    if not start and _status(response) == 206:
        response.close()
        raise FetchError(
            f"{url}: the server sent part of the file (206, {response.headers.get('Content-Range')!r}) "
            f"when the whole file was asked for; nothing was saved. Try again later or download it "
            f"by hand"
        )
    with response:
        kept = start if _status(response) == 206 else 0
        os.ftruncate(fd, kept)
        os.lseek(fd, kept, os.SEEK_SET)
        total = _total(response, kept)
        if not kept:
            _record_validator(validator_file, url, _validator_of(response), total)
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


def _continues(response, start: int, validator: str | None, recorded_total: int | None) -> bool:
    """Whether ``response`` (to ``Range: bytes=start-`` with ``If-Range: validator``) is the rest of the
    version the part holds: a 206 from exactly ``start``, for a file of the recorded total size, and (for a
    server that ignores ``If-Range``) with the recorded validator where it names one."""
    if _status(response) != 206:
        return False
    content_range = _content_range(response)
    if content_range is None or content_range[0] != start:
        return False
    if recorded_total is not None and content_range[1] is not None and content_range[1] != recorded_total:
        return False
    named = {(response.headers.get(h) or "").strip() for h in ("ETag", "Last-Modified")} - {""}
    return not named or validator in named


def _record_validator(path: Path, url: str, validator: str | None, total: int | None) -> None:
    if validator is None:
        path.unlink(missing_ok=True)
        return
    # written in place: a torn write is unreadable JSON, read as "no validator" (the part is then started over)
    path.write_text(json.dumps({"url": url, "validator": validator, "total": total}), encoding="utf-8")


def _interrupted(url: str, written: int, total: int | None, part: Path, exc: BaseException | None) -> str:
    why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return (
        f"{url}: the download stopped after {_size(written)} of {_size(total)}{why}; the part is kept in "
        f"{part}: run the same command again to resume it"
    )


def _verify(
    part: Path, url: str, label: str, sha256: str | None, size: int | None, pinned_by: str = "the pinned"
) -> None:
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        raise FetchError(
            f"{url}: the downloaded file has {actual_size} bytes, {label} should have {size}; "
            f"nothing was saved. The server may have changed the file: download it by hand and check it"
        )
    if sha256 is not None:
        actual = sha256_of(part)
        if not matches(actual, sha256):
            raise FetchError(
                f"{url}: the downloaded file's sha256 {actual} does not match {pinned_by} {sha256} for "
                f"{label}; nothing was saved. The server may have changed the file: download it by "
                f"hand and check it"
            )


def fetch(
    remote: RemoteFile,
    target: Path,
    *,
    progress: bool = True,
    check: Callable[[Path], None] | None = None,
    retries: int = 2,
    pinned_by: str = "the pinned",
) -> Path:
    """Download ``remote`` to ``target`` from the first of its URLs that works."""
    if offline():
        raise FetchError(
            f"{remote.filename}: downloads are disabled (IQADEF_OFFLINE is set); download it from "
            f"{', '.join(remote.urls) or remote.manual or '(no URL known)'} and put it at {target}"
        )
    if remote.manual or not remote.urls:
        how = remote.manual or "it has no download URL"
        raise FetchError(f"{remote.filename}: cannot be downloaded automatically ({how}); put it at {target}")
    errors = []
    for url in remote.urls:
        try:
            return download(
                url,
                target,
                sha256=remote.sha256,
                size=remote.size,
                progress=progress,
                label=remote.filename,
                check=check,
                retries=retries,
                pinned_by=pinned_by,
            )
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


#: Unpacked sizes up to this pass the ratio limit whatever the archive's size (small archives of text
#: compress far better than images: a 1 MB zip of a CSV may well hold 30 MB).
_RATIO_FLOOR = 64 * 2**20
_DEFAULT_MAX_RATIO = 100.0
_DEFAULT_MAX_BYTES = 100 * 10**9
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _limit(variable: str, default: float, sizes: bool) -> float | None:
    """The value of an unpack limit variable: a number (with a K/M/G/T suffix for sizes), ``off`` for none."""
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw in ("off", "none", "0", "no", "false"):
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?" if sizes else r"(\d+(?:\.\d+)?)()", raw)
    if found is None:
        example = "a size such as 500GB" if sizes else "a number such as 1000"
        raise FetchError(f"{variable}={os.environ[variable]!r}: must be {example}, or off (no limit)")
    return float(found.group(1)) * _UNITS[found.group(2)]


class _Budget:
    """How many bytes an archive may unpack to (:data:`_RATIO_FLOOR`, ``IQADEF_UNPACK_MAX_RATIO``,
    ``IQADEF_UNPACK_MAX_BYTES``); counts what is written and refuses, naming the limit and its override."""

    def __init__(self, archive: Path):
        self.archive = archive
        ratio = _limit("IQADEF_UNPACK_MAX_RATIO", _DEFAULT_MAX_RATIO, sizes=False)
        most = _limit("IQADEF_UNPACK_MAX_BYTES", _DEFAULT_MAX_BYTES, sizes=True)
        self.limits = []
        if ratio is not None:
            self.limits.append(
                (
                    max(_RATIO_FLOOR, ratio * archive.stat().st_size),
                    f"{ratio:g} times the archive's {_size(archive.stat().st_size)}",
                    "IQADEF_UNPACK_MAX_RATIO",
                )
            )
        if most is not None:
            self.limits.append((most, f"{_size(int(most))}", "IQADEF_UNPACK_MAX_BYTES"))
        self.used = 0

    def check(self, total: int, declared: bool) -> None:
        for limit, what, variable in self.limits:
            if total > limit:
                how = "declares members of" if declared else "unpacks to more than"
                raise FetchError(
                    f"{self.archive}: {how} {_size(total)}, over the limit of {what}; refused, nothing "
                    f"was unpacked. If you trust this archive, set {variable}=off (or a larger value) "
                    f"and fetch again"
                )

    def add(self, n: int) -> None:
        self.used += n
        self.check(self.used, declared=False)


def _disk_full(archive: Path, dest: Path) -> FetchError:
    return FetchError(
        f"{archive}: the disk is full while unpacking into {dest}; nothing was unpacked: free space "
        f"(or set --root to a larger disk) and fetch again"
    )


def extract(archive: Path, dest: Path, kind: str) -> list[str]:
    """Unpack ``archive`` (a :data:`ARCHIVES` kind) into ``dest``; returns the member paths written.

    Members are unpacked into a temporary folder inside ``dest`` and moved into place only when the whole
    archive was read and checked, so a damaged or truncated archive, an unsafe member, one over the size
    limits, a full disk or a file/folder conflict leaves ``dest`` as it was. Nothing already in ``dest`` is
    deleted: folders are merged, and a file of the archive replaces only a file of the same name.
    """
    if kind not in ARCHIVES:
        raise FetchError(f"{archive}: unknown archive kind {kind!r}; one of {', '.join(ARCHIVES)}")
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(archive)
    staging = dest / f".iqadef-extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            if kind == "zip":
                names = _extract_zip(archive, staging, budget)
            else:
                names = _extract_tar(archive, staging, kind, budget)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(archive, dest) from None
            raise FetchError(
                f"{archive}: cannot unpack into {dest} ({exc.strerror or exc}); nothing was unpacked"
            ) from None
        tops = sorted(os.listdir(staging))
        for top in tops:
            conflict = _conflict(staging / top, dest / top)
            if conflict is not None:
                kind_src, where = conflict
                raise FetchError(
                    f"{archive}: holds a {kind_src} {where.relative_to(dest)} where {where} is "
                    f"{'a folder' if kind_src == 'file' else 'a file'}; refused, nothing was unpacked "
                    f"and nothing deleted: move {where} aside and fetch again"
                )
        for top in tops:
            _merge(staging / top, dest / top)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _member_path(staging: Path, name: str) -> Path | None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return staging.joinpath(*parts) if parts else None


def _extract_zip(archive: Path, staging: Path, budget: _Budget) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                mode = info.external_attr >> 16
                if _unsafe(info.filename):
                    raise FetchError(
                        f"{archive}: member {info.filename!r} would be written outside the data "
                        f"folder; refused (nothing was extracted)"
                    )
                if stat.S_ISLNK(mode):
                    raise FetchError(
                        f"{archive}: member {info.filename!r} is a symbolic link; refused (nothing was extracted)"
                    )
                if info.flag_bits & 0x1:
                    raise FetchError(
                        f"{archive}: member {info.filename!r} is encrypted (a password is needed); "
                        f"unpack it yourself into {staging.parent} (nothing was extracted)"
                    )
            budget.check(sum(info.file_size for info in members), declared=True)
            for info in members:
                _extract_zip_member(zf, info, archive, staging, budget)
            return [m.filename for m in members if not m.is_dir()]
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{archive}: not a readable zip archive ({exc}); delete it and fetch again") from None


def _extract_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, staging: Path, budget: _Budget
) -> None:
    """Write one member, counting its bytes against ``budget``; its CRC-32 is checked at its end (zipfile)."""
    path = _member_path(staging, info.filename)
    if path is None:
        return
    if info.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(info) as src, open(path, "wb") as out:
            while True:
                block = src.read(_CHUNK)
                if not block:
                    break
                budget.add(len(block))
                out.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError) as exc:
        raise FetchError(
            f"{archive}: member {info.filename!r} is damaged ({type(exc).__name__}: {exc}); the "
            f"archive is corrupt: delete it and fetch again (nothing was extracted)"
        ) from None
    except NotImplementedError as exc:
        raise FetchError(
            f"{archive}: member {info.filename!r} uses a compression method Python cannot read "
            f"({exc}); unpack it with another tool into {staging.parent} (nothing was extracted)"
        ) from None
    except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required for extraction"
        raise FetchError(
            f"{archive}: member {info.filename!r} cannot be read ({exc}); unpack it yourself into "
            f"{staging.parent} (nothing was extracted)"
        ) from None


#: tarfile's mode for each kind: explicit, so a damaged file is reported for what it is, not as four
#: failed guesses.
_TAR_MODES: dict[str, Literal["r:", "r:gz", "r:bz2", "r:xz"]] = {
    "tar": "r:",
    "tar.gz": "r:gz",
    "tgz": "r:gz",
    "tar.bz2": "r:bz2",
    "tar.xz": "r:xz",
}
_DECOMPRESS: dict[str, Callable[..., Any]] = {
    "tar.gz": gzip.open,
    "tgz": gzip.open,
    "tar.bz2": bz2.open,
    "tar.xz": lzma.open,
}
#: What the decompressors raise on damaged data.
_DAMAGED = (gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, tarfile.ReadError)


def _check_stream(archive: Path, kind: str, budget: _Budget) -> None:
    """Read the whole compressed stream to its end, so its trailer is checked (gzip's CRC-32 and length,
    bzip2's block and stream CRCs, xz's check): tarfile stops at the end-of-archive blocks and never gets
    there. Counts the unpacked bytes against ``budget`` (a tar is about as large as its members)."""
    opener = _DECOMPRESS.get(kind)
    if opener is None:
        return
    try:
        with opener(archive, "rb") as stream:
            while True:
                block = stream.read(_CHUNK)
                if not block:
                    break
                budget.add(len(block))
    except _DAMAGED as exc:
        raise _damaged_tar(archive, exc) from None
    except OSError as exc:  # bz2: "Invalid data stream"
        if exc.errno is None:
            raise _damaged_tar(archive, exc) from None
        raise


def _damaged_tar(archive: Path, exc: BaseException) -> FetchError:
    why = " ".join(str(exc).split()) or type(exc).__name__
    return FetchError(f"{archive}: the archive is damaged ({why}); delete it and fetch again (nothing was extracted)")


def _extract_tar(archive: Path, staging: Path, kind: str, budget: _Budget) -> list[str]:
    _check_stream(archive, kind, budget)
    try:
        with tarfile.open(archive, _TAR_MODES[kind]) as tf:
            members = tf.getmembers()
            for member in members:
                if _unsafe(member.name):
                    raise FetchError(
                        f"{archive}: member {member.name!r} would be written outside the data "
                        f"folder; refused (nothing was extracted)"
                    )
            budget.check(sum(m.size for m in members if m.isfile()), declared=True)
            try:
                tf.extractall(staging, filter="data")
            except tarfile.FilterError as exc:
                raise FetchError(f"{archive}: member refused ({exc}); nothing was extracted") from None
            return [m.name for m in members if m.isfile()]
    except _DAMAGED as exc:
        raise _damaged_tar(archive, exc) from None
    except OSError as exc:
        if exc.errno is None:
            raise _damaged_tar(archive, exc) from None
        raise


def _conflict(src: Path, dst: Path) -> tuple[str, Path] | None:
    """Where merging ``src`` into ``dst`` would have to delete something: a file of the archive where the
    folder has a directory, or a folder of the archive where it has a file; ``(what the archive holds, path)``."""
    if not os.path.lexists(dst):
        return None
    src_dir = src.is_dir() and not src.is_symlink()
    if src_dir and dst.is_dir():  # a folder, or a link to one the user made (a data disk): merged into
        for child in sorted(os.listdir(src)):
            found = _conflict(src / child, dst / child)
            if found is not None:
                return found
        return None
    if src_dir:
        return "folder", dst
    if dst.is_dir():
        return "file", dst
    return None


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; folders are merged, files replace files (:func:`_conflict` was checked first)."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir():
        for child in sorted(os.listdir(src)):
            _merge(src / child, dst / child)
        return
    os.replace(src, dst)
