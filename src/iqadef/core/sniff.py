"""What a file is, from its first bytes: for error messages that say "this is a PNG image, not a CSV".

Used where a user can give the wrong file (the MOS CSV, a weights file): naming what was given is the
quickest way to the fix.
"""

from __future__ import annotations

#: What :func:`binary_kind` says of data with NUL bytes in no format it knows.
BINARY = "binary data"

#: Leading bytes of formats a user may give by mistake, and how to say what they are.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP image, WAV or AVI)"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one: export it as CSV)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office file (.xls/.doc: export it as CSV)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable program"),
    (b"\x93NUMPY", "a numpy .npy array"),
)


def binary_kind(head: bytes) -> str | None:
    """A phrase naming the binary format ``head`` starts with, or None when it looks like text.

    Text in any common encoding has no NUL byte except UTF-16/32, which the callers recognise first by
    their byte-order mark; a NUL in the first bytes means binary data (or UTF-16 without a BOM).
    """
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if b"\x00" in head:
        return BINARY
    return None


def looks_like_text(head: bytes) -> bool:
    """Whether ``head`` decodes as UTF-8 (a character cut at the end allowed) into printable text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)


#: How a web page starts (a login form or an error page saved in place of the file asked for).
_WEB_PAGE = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b'{"error')


def looks_like_web_page(head: bytes) -> bool:
    """Whether ``head`` is the start of an HTML/XML page or a JSON error (what servers send instead of a
    file when a login is needed or the link expired)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_WEB_PAGE)


#: Leading bytes of each archive kind iqadef unpacks (``tar``: ``ustar`` at offset 257, checked apart).
_ARCHIVE_MAGIC = {
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "tar.gz": (b"\x1f\x8b",),
    "tgz": (b"\x1f\x8b",),
    "tar.bz2": (b"BZh",),
    "tar.xz": (b"\xfd7zXZ\x00",),
}
#: Suffixes of files that must be text, and of MATLAB files (whose 128-byte header starts with ``MATLAB``).
_TEXT_SUFFIXES = {"csv", "tsv", "txt", "json", "yaml", "yml"}


def _is_tar(head: bytes) -> bool:
    """A tar header: the POSIX/GNU ``ustar`` magic, or (old v7 archives) a header whose checksum adds up."""
    if head[257:262] == b"ustar":
        return True
    if len(head) < 512:
        return False
    try:
        stored = int(head[148:156].strip(b" \x00") or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


def wrong_content(head: bytes, expected: str) -> str | None:
    """Why ``head`` (the first 512+ bytes of a file) cannot be the start of a file of kind ``expected`` (an
    archive kind of :mod:`iqadef.core.fetch`, else the file's suffix: ``csv``, ``mat``...); None when it can.

    The phrase names what the file is instead (a web page, a PNG image...), for one-line refusals.
    """
    if not head:
        return "an empty file"
    if looks_like_web_page(head):
        return "a web page (HTML), not the file itself: the server may want a login or the link may have expired"
    if expected in _ARCHIVE_MAGIC:
        if head.startswith(_ARCHIVE_MAGIC[expected]):
            return None
        return binary_kind(head) or "text"
    if expected == "tar":
        return None if _is_tar(head) else binary_kind(head) or "text"
    if expected in _TEXT_SUFFIXES:
        if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            return None
        return binary_kind(head)
    if expected == "mat":
        return None if head.startswith(b"MATLAB") else binary_kind(head) or "text"
    return None
