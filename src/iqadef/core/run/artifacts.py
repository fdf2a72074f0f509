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

from ..store import ArtifactReader as ArtifactReader  # its home is the store (the one owner of SQL)


def _hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _seed(*parts: Any) -> int:
    return int(_hash(*parts)[:15], 16)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels (what a PNG stores), so cached and fresh images score identically."""
    return torch.round(images.clamp(0, 1) * 255.0) / 255.0


def png_bytes(image: torch.Tensor) -> bytes:
    arr = (quantize(image.detach().cpu()) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_png(path: Path | io.BytesIO) -> torch.Tensor:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def example_name(row: dict[str, Any]) -> str:
    """File name of a cell's example D(x_a): its plugins and its content (batch key), not its image's name,
    so a renamed image's copied row and a fresh run's row name the same file."""
    return _hash("example", row["metric_key"], row["attack_key"], row["defence_key"], row["batch_key"])[:24]
