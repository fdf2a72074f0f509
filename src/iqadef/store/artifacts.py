"""Artifacts of a run: the 8-bit PNG codec of cached adversarial images and the content keys and seeds
that name them (a key is a sha256 of everything that determines the content)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from iqadef.store.results import ArtifactReader as ArtifactReader  # its home is the store (the one owner of SQL)


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
#: The PNG text chunk of a cached x_a that records the native value a budget search chose (core/budget.py).
NATIVE_CHUNK = "iqadef:native_value"


def png_bytes(image: torch.Tensor, queries: int | None = None, native: float | None = None) -> bytes:
    """``image`` as an 8-bit PNG; ``queries`` (a black-box attack's count for it) and ``native`` (the value a
    budget search chose for it) go into text chunks, so a cached x_a read back by a later unit or a resumed
    run still knows what it cost and how it was made."""
    arr = (quantize(image.detach().cpu()) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    info = None
    if queries is not None or native is not None:
        info = PngInfo()
        if queries is not None:
            info.add_text(QUERIES_CHUNK, str(int(queries)))
        if native is not None:
            info.add_text(NATIVE_CHUNK, repr(float(native)))
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def png_queries(data: bytes) -> int | None:
    """The queries recorded by :func:`png_bytes` in a PNG, None when it records none."""
    with Image.open(io.BytesIO(data)) as img:
        value = getattr(img, "text", {}).get(QUERIES_CHUNK)
    return int(value) if value is not None else None


def png_native(data: bytes) -> float | None:
    """The native value recorded by :func:`png_bytes` in a PNG, None when it records none."""
    with Image.open(io.BytesIO(data)) as img:
        value = getattr(img, "text", {}).get(NATIVE_CHUNK)
    return float(value) if value is not None else None


def read_png(path: Path | io.BytesIO) -> torch.Tensor:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def adv_file(key: str) -> str:
    """Where the x_a cached under ``key`` lives, relative to the run folder (sharded by the key's first byte)."""
    return f"cache/adv/{key[:2]}/{key}.png"


def example_name(row: dict[str, Any]) -> str:
    """File name of a cell's example D(x_a): its plugins and its content (batch key), not its image's name,
    so a renamed image's copied row and a fresh run's row name the same file."""
    return _hash("example", row["metric_key"], row["attack_key"], row["defence_key"], row["batch_key"])[:24]
