"""Image folders and MOS files.

Images are read lazily, batch by batch (a dataset is never held in memory whole). Every image becomes
float RGB in [0, 1]:

* EXIF orientation is applied; palette, grayscale, CMYK and 16-bit images are converted to 8-bit RGB;
* alpha is composited onto a white background (documented in docs/reliability.md);
* an image whose longer side exceeds ``max_side`` is downscaled (area-averaged) to fit, with a
  warning, so a huge file cannot exhaust memory (PIL's decompression-bomb guard still applies).

An unreadable file is reported (file name and reason) and left out; the grid goes on.
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: Largest image side kept as is; larger images are downscaled to this (override: dataset.max_side).
DEFAULT_MAX_SIDE = 2048


class ImageWarning(UserWarning):
    """An image was left out or changed on load (unreadable, too large...)."""


def builtin_images_dir() -> Path:
    """The small image set shipped inside the package (see docs/embedded.md)."""
    return Path(str(resources.files("iqadef") / "data" / "images"))


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset: its name (relative path), file, content hash, size after loading."""

    name: str
    path: Path
    sha256: str
    size: tuple[int, int]  # (H, W) after the max_side policy
    mos: float | None = None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    longest = max(w, h)
    if longest <= max_side:
        return w, h
    scale = max_side / longest
    return max(1, round(w * scale)), max(1, round(h * scale))


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(W, H) as displayed: EXIF orientations 5-8 rotate by 90/270 degrees and swap the sides."""
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def read_image(path: Path, max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """Load one image as a float tensor ``[3, H, W]`` in [0, 1] (see the module docstring)."""
    with Image.open(path) as img:
        size = _oriented_size(img)
        target = _fit(size, max_side)
        if target != size:
            img.draft("RGB", _fit(img.size, max_side))  # cheap JPEG downscale before decoding, where possible
        rgb = _to_rgb(img)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BOX)
        arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _probe(path: Path, max_side: int) -> tuple[int, int]:
    """Decode a file fully (catches truncation) and return its (H, W) after loading."""
    with Image.open(path) as img:
        size = _oriented_size(img)
        img.draft("RGB", _fit(img.size, max_side))
        img.load()
    w, h = _fit(size, max_side)
    if (w, h) != size:
        warnings.warn(f"{path}: {size[0]}x{size[1]} is larger than dataset.max_side={max_side}; "
                      f"downscaled to {w}x{h}", ImageWarning, stacklevel=2)
    return h, w


def read_mos(path: Path) -> dict[str, float]:
    """A CSV with a header naming an image column (``image``/``name``/``file``) and a ``mos`` column."""
    if not path.is_file():
        raise ConfigError(f"dataset.mos: {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        lookup = dict(zip(fields, reader.fieldnames or []))
        name_col = next((lookup[c] for c in ("image", "name", "file", "image_name", "filename") if c in lookup), None)
        mos_col = next((lookup[c] for c in ("mos", "score", "dmos") if c in lookup), None)
        if name_col is None or mos_col is None:
            raise ConfigError(f"{path}: needs a header with an image column (image/name/file) and a `mos` "
                              f"column; found {reader.fieldnames}")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.get(name_col) or "").strip()
            raw = (row.get(mos_col) or "").strip()
            if not name:
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{path}:{line}: mos {raw!r} for {name!r} is not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{path}:{line}: mos {raw!r} for {name!r} is not finite")
            if name in out:
                raise ConfigError(f"{path}:{line}: {name!r} is listed twice; keep one row per image")
            out[name] = value
    return out


class Dataset:
    """A folder of images (recursively), optionally with MOS values."""

    def __init__(self, folder: Path, mos: Path | None = None, *, max_side: int = DEFAULT_MAX_SIDE,
                 limit: int | None = None):
        self.folder = Path(folder)
        self.max_side = max_side
        self.problems: list[str] = []
        if not self.folder.is_dir():
            raise ConfigError(f"dataset.images: {self.folder} is not a folder of images")
        files = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"dataset.images: {self.folder} holds no images "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        mos_values = read_mos(Path(mos)) if mos else {}
        items = []
        for path in files:
            name = path.relative_to(self.folder).as_posix()
            try:
                size = _probe(path, max_side)
            except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable image"
                msg = f"{path}: not a readable image ({type(exc).__name__}: {exc}); left out"
                self.problems.append(msg)
                warnings.warn(msg, ImageWarning, stacklevel=2)
                continue
            items.append(ImageItem(name, path, _file_sha256(path), size, mos_values.get(name)))
        if mos_values:
            names = {i.name for i in items}
            missing = sorted(n for n in names if n not in mos_values)
            extra = sorted(n for n in mos_values if n not in names and not (self.folder / n).is_file())
            if missing:
                self.problems.append(f"{mos}: no MOS for {len(missing)} image(s), e.g. {missing[0]!r}; "
                                     f"their SROCC entries are left out")
            if extra:
                self.problems.append(f"{mos}: {len(extra)} name(s) match no image, e.g. {extra[0]!r}; ignored")
            for msg in self.problems[-2:]:
                if msg.startswith(str(mos)):
                    warnings.warn(msg, ImageWarning, stacklevel=2)
        if limit is not None:
            items = items[:limit]
        if not items:
            raise ConfigError(f"dataset.images: no readable image in {self.folder}")
        self.items: list[ImageItem] = items
        self.has_mos = bool(mos_values)

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int) -> list[list[ImageItem]]:
        """Fixed batches of same-sized images, in name order (the same on every resume)."""
        groups: dict[tuple[int, int], list[ImageItem]] = {}
        for item in self.items:
            groups.setdefault(item.size, []).append(item)
        out = []
        for size in sorted(groups, key=lambda s: groups[s][0].name):
            group = groups[size]
            out.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
        return out

    def load(self, batch: Sequence[ImageItem]) -> torch.Tensor:
        return torch.stack([read_image(item.path, self.max_side) for item in batch])

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.items)
