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
