"""Artifacts of a run: the 8-bit PNG codec of cached adversarial images and the content keys and seeds
that name them (a key is a sha256 of everything that determines the content)."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _seed(*parts: Any) -> int:
    return int(_hash(*parts)[:15], 16)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what a PNG stores), so cached and fresh images score identically."""
    return torch.round(images.clamp(0, 1) * 255.0) / 255.0


#: The PNG text chunk of a cached x_a that records a black-box attack's queries for it.
QUERIES_CHUNK = "iqadef:queries"


def png_bytes(image: torch.Tensor, queries: int | None = None) -> bytes:
    """``image`` as an 8-bit PNG; ``queries`` (a black-box attack's count for it) goes into a text chunk, so
    a cached x_a read back by a later unit or a resumed run still knows what it cost."""
    arr = (quantize(image.detach().cpu()) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    info = None
    if queries is not None:
        info = PngInfo()
        info.add_text(QUERIES_CHUNK, str(int(queries)))
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def png_queries(data: bytes) -> int | None:
    """The queries recorded by :func:`png_bytes` in a PNG, None when it records none."""
    with Image.open(io.BytesIO(data)) as img:
        value = getattr(img, "text", {}).get(QUERIES_CHUNK)
    return int(value) if value is not None else None


def read_png(path: Path | io.BytesIO) -> torch.Tensor:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ArtifactReader:
    """``ResultStore.artifact`` for the unit thread: its own read-only connection to ``results.sqlite``
    (a SQLite connection belongs to the thread that opened it). A read error counts as a cache miss."""

    def __init__(self, path: Path):
        self.uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        self._db: sqlite3.Connection | None = None

    def __call__(self, key: str) -> tuple[str, str] | None:
        try:
            if self._db is None:
                self._db = sqlite3.connect(self.uri, uri=True, timeout=30, check_same_thread=False)
            row = self._db.execute("SELECT path, sha256 FROM artifacts WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return (row[0], row[1]) if row else None


def example_name(row: dict[str, Any]) -> str:
    """File name of a cell's example D(x_a): its plugins and its content (batch key), not its image's name,
    so a renamed image's copied row and a fresh run's row name the same file."""
    return _hash("example", row["metric_key"], row["attack_key"], row["defence_key"], row["batch_key"])[:24]
