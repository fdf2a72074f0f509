"""Image folders and MOS files.

Images are read lazily, batch by batch (a dataset is never held in memory whole). Every image becomes
float RGB in [0, 1]:

* EXIF orientation is applied; palette, grayscale, CMYK and 16-bit images are converted to 8-bit RGB;
* alpha is composited onto a white background (documented in docs/reliability.md);
* an image whose longer side exceeds ``max_side`` is downscaled (area-averaged) to fit, with a
  warning, so a huge file cannot exhaust memory (PIL's decompression-bomb guard still applies). JPEGs
  are decoded at reduced size (``draft``); other formats are decoded whole by PIL, and every step after
  that (orientation, colour conversion, alpha) works on the decoded image or on strips of it, so the
  only full-size buffer is PIL's own (a 12000x12000 RGB PNG: ~0.6 GB, not 2 GB); the pixels are the
  same as converting the whole image at once.

An unreadable file is reported (file name and reason) and left out; the grid goes on. So are files
with an image suffix that are not regular image files (folders, FIFOs, dangling symlinks: never
opened) and animations / multi-page files (which frame would be meant is unclear).
"""

from __future__ import annotations

import csv
import codecs
import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
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


def _not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` (named like an image) cannot be one, from ``stat`` alone: a FIFO is never opened
    (opening one blocks until someone writes to it)."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return "vanished while the folder was listed"
    except OSError as exc:  # a symlink loop, a permission problem on the way
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not an image file (images inside it are read like those of any subfolder)"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not an image file; not opened"
    if stat.S_ISSOCK(mode):
        return "a socket, not an image file"
    return "a device file, not an image file; not opened"


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


#: Pixels converted at a time (about 4 Mpixels: one strip for any image up to 2048x2048).
_STRIP_PIXELS = 1 << 22
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def _strip_converter(img: Image.Image):
    """``(mode, convert)``: the per-pixel conversion of ``img`` to 8 bits, as a function of a strip of it.

    Grey images stay grey (``L``, a quarter of RGB's memory) until after the downscale: the box filter
    treats channels alike, so resizing then replicating the channel gives the same pixels.
    """
    if img.mode in _SIXTEEN_BIT:
        peak = 65535.0 if (img.getextrema()[1] or 0) > 255 else 255.0  # of the whole image, as before

        def convert(part: Image.Image) -> Image.Image:
            arr = np.asarray(part, dtype=np.float64)
            return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return "L", convert
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        def convert(part: Image.Image) -> Image.Image:
            rgba = part.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return "RGB", convert
    if img.mode == "1":
        return "L", lambda part: part.convert("L")
    return "RGB", lambda part: part.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit RGB or grey (``L``), orientation applied; converted in strips, so a huge image gets no
    full-size copy besides PIL's decoded one and the 8-bit result."""
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("RGB", "L"):
        return img
    mode, convert = _strip_converter(img)
    w, h = img.size
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    if rows >= h:
        return convert(img)
    out = Image.new(mode, img.size)
    for top in range(0, h, rows):
        out.paste(convert(img.crop((0, top, w, min(h, top + rows)))), (0, top))
    return out


def read_image(path: Path, max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """Load one image as a float tensor ``[3, H, W]`` in [0, 1] (see the module docstring)."""
    with Image.open(path) as img:
        size = _oriented_size(img)
        target = _fit(size, max_side)
        if target != size:
            img.draft("RGB", _fit(img.size, max_side))  # cheap JPEG downscale before decoding, where possible
        img.load()
        small = _to_8bit(img)
        if small.size != target:
            small = small.resize(target, Image.Resampling.BOX)
        arr = np.array(small.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


class NotAStillImage(Exception):
    """A file PIL reads but iqadef leaves out on purpose (an animation, a multi-page file)."""


def _probe(path: Path, max_side: int) -> tuple[int, int]:
    """Decode a file fully (catches truncation) and return its (H, W) after loading."""
    with Image.open(path) as img:
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and img.format != "MPO":  # MPO: a camera JPEG with extra pictures; frame 0 is the photo
            raise NotAStillImage(f"has {frames} frames (an animation or a multi-page {img.format}); iqadef reads "
                                 f"still images only: save the frame you want as its own file")
        size = _oriented_size(img)
        img.draft("RGB", _fit(img.size, max_side))
        img.load()
    w, h = _fit(size, max_side)
    if (w, h) != size:
        warnings.warn(f"{path}: {size[0]}x{size[1]} is larger than dataset.max_side={max_side}; "
                      f"downscaled to {w}x{h}", ImageWarning, stacklevel=2)
    return h, w


#: Byte-order marks, longest first (UTF-32-LE's begins with UTF-16-LE's).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: Path, what: str) -> tuple[str, str]:
    """The text of a small user file and the encoding it was read with.

    A byte-order mark decides (UTF-8, UTF-16, UTF-32: what Excel's "Unicode text" and Windows tools
    write); else UTF-8; else cp1252, the Windows superset of Latin-1 (every file that is not UTF-8 decodes
    in one of the two). A file that is not text (an image, a workbook) is refused, naming what it is.
    """
    from .sniff import BINARY, binary_kind

    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as exc:
                shown = encoding.removesuffix("-sig").upper()
                raise ConfigError(f"{what}: {path} starts with a {shown} byte-order mark but byte {exc.start} is "
                                  f"not {shown}; save it again as UTF-8") from None
    kind = binary_kind(data[:4096])
    if kind is not None:
        hint = "; if it is UTF-16 text, save it with a byte-order mark or as UTF-8" if kind == BINARY else ""
        raise ConfigError(f"{what}: {path} is not a text file (it is {kind}{hint}); give a CSV file")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined: plain Latin-1
        return data.decode("latin-1"), "latin-1"


def read_mos(path: Path) -> dict[str, float]:
    """A CSV with a header naming an image column (``image``/``name``/``file``) and a ``mos`` column.

    Encodings: see :func:`read_text` (UTF-8 with or without BOM, UTF-16/32 with BOM, else cp1252/Latin-1).
    """
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"dataset.mos: {path} {what}")
    text, _ = read_text(path, "dataset.mos")
    with io.StringIO(text, newline="") as f:
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
        files = []
        for path in sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            reason = _not_a_regular_file(path)
            if reason is None:
                files.append(path)
            else:
                self._left_out(f"{path}: {reason}; left out")
        if not files:
            raise ConfigError(f"dataset.images: {self.folder} holds no images "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        mos_values = read_mos(Path(mos)) if mos else {}
        items = []
        for path in files:
            name = path.relative_to(self.folder).as_posix()
            try:
                size = _probe(path, max_side)
            except NotAStillImage as exc:
                self._left_out(f"{path}: {exc}; left out")
                continue
            except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable image"
                self._left_out(f"{path}: not a readable image ({type(exc).__name__}: {exc}); left out")
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

    def _left_out(self, message: str) -> None:
        self.problems.append(message)
        warnings.warn(message, ImageWarning, stacklevel=3)

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
