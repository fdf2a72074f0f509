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

import codecs
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import random
import stat
import warnings
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from iqadef.core.errors import ConfigError, IqadefError
from iqadef.core.fetch import FetchError, RemoteFile, extract, fetch, matches, offline, sha256_of
from iqadef.core.files import atomic_write_bytes
from iqadef.core.params import Param, resolve
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.core.sniff import BINARY, binary_kind, wrong_content
from iqadef.core.suggest import did_you_mean

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
            raise NotAStillImage(
                f"has {frames} frames (an animation or a multi-page {img.format}); iqadef reads "
                f"still images only: save the frame you want as its own file"
            )
        size = _oriented_size(img)
        img.draft("RGB", _fit(img.size, max_side))
        img.load()
    w, h = _fit(size, max_side)
    if (w, h) != size:
        warnings.warn(
            f"{path}: {size[0]}x{size[1]} is larger than dataset.max_side={max_side}; downscaled to {w}x{h}",
            ImageWarning,
            stacklevel=2,
        )
    return h, w


#: Byte-order marks, longest first (UTF-32-LE's begins with UTF-16-LE's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def read_text(path: Path, what: str) -> tuple[str, str]:
    """The text of a small user file and the encoding it was read with.

    A byte-order mark decides (UTF-8, UTF-16, UTF-32: what Excel's "Unicode text" and Windows tools
    write); else UTF-8; else cp1252, the Windows superset of Latin-1 (every file that is not UTF-8 decodes
    in one of the two). A file that is not text (an image, a workbook) is refused, naming what it is.
    """
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as exc:
                shown = encoding.removesuffix("-sig").upper()
                raise ConfigError(
                    f"{what}: {path} starts with a {shown} byte-order mark but byte {exc.start} is "
                    f"not {shown}; save it again as UTF-8"
                ) from None
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


#: Header names (lower case) taken as the image column and as the score column of a MOS file, in order
#: of preference (KonIQ-10k's ``image_name``/``MOS``, KADID-10k's ``dist_img``/``dmos``, SPAQ's ``Image name``).
NAME_COLUMNS = (
    "image",
    "name",
    "file",
    "filename",
    "file_name",
    "image_name",
    "image name",
    "img_name",
    "img",
    "path",
    "dist_img",
    "imageid",
    "image_id",
)
SCORE_COLUMNS = ("mos", "dmos", "score", "mos_score", "mean_score", "mos score", "quality", "rating")
#: Delimiters a MOS file may use (comma, semicolon as Excel writes in many locales, tab).
DELIMITERS = ",;\t"


def _delimiter(text: str) -> str:
    """The delimiter of a small CSV: the one of ``,;\t`` that occurs in the header line (comma first)."""
    header = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    try:
        return csv.Sniffer().sniff(header, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return next((d for d in DELIMITERS if d in header), ",")


def read_mos(
    path: Path, what: str = "dataset.mos", *, name_column: str | None = None, score_column: str | None = None
) -> dict[str, float]:
    """A CSV with a header naming an image column and a score column (:data:`NAME_COLUMNS`,
    :data:`SCORE_COLUMNS`, any case; or the columns given), separated by ``,``, ``;`` or a tab.

    Encodings: see :func:`read_text` (UTF-8 with or without BOM, UTF-16/32 with BOM, else cp1252/Latin-1).
    """
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{what}: {path} {state}")
    text, _ = read_text(path, what)
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f, delimiter=_delimiter(text))
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        lookup = dict(zip(fields, reader.fieldnames or []))
        name_col = (
            lookup.get(name_column.lower())
            if name_column
            else next((lookup[c] for c in NAME_COLUMNS if c in lookup), None)
        )
        mos_col = (
            lookup.get(score_column.lower())
            if score_column
            else next((lookup[c] for c in SCORE_COLUMNS if c in lookup), None)
        )
        if name_col is None or mos_col is None:
            names = f"`{name_column}`" if name_column else "an image column (image/name/file/filename/image_name)"
            scores = f"`{score_column}`" if score_column else "a `mos` column (mos/dmos/score)"
            raise ConfigError(f"{path}: needs a header with {names} and {scores}; found {reader.fieldnames}")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.get(name_col) or "").strip()
            raw = (row.get(mos_col) or "").strip()
            if not name:
                continue
            try:
                value = float(raw.replace(",", ".")) if raw.count(",") == 1 and "." not in raw else float(raw)
            except ValueError:
                raise ConfigError(f"{path}:{line}: mos {raw!r} for {name!r} is not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{path}:{line}: mos {raw!r} for {name!r} is not finite")
            if name in out:
                raise ConfigError(f"{path}:{line}: {name!r} is listed twice; keep one row per image")
            out[name] = value
    return out


@dataclass(frozen=True)
class Entry:
    """One image a dataset plugin yields: its name in the run (a relative path), its file, its MOS (or DMOS)
    from the dataset's own score file, and its split. ``sha256``: the content the dataset promises (its
    index records it); a file with other content is left out as a dataset problem."""

    name: str
    path: Path
    mos: float | None = None
    split: str | None = None
    sha256: str | None = None


class Dataset:
    """A folder of images (recursively), optionally with MOS values; or the ``entries`` a dataset plugin
    yields (names, files and MOS chosen by the plugin; the folder is then only their common root)."""

    def __init__(
        self,
        folder: Path,
        mos: Path | None = None,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        limit: int | None = None,
        entries: Sequence[Entry] | None = None,
        label: str | None = None,
    ):
        self.folder = Path(folder)
        self.max_side = max_side
        self.problems: list[str] = []
        label = label or str(self.folder)
        promised: dict[str, str] = {}  # name -> the sha256 a dataset plugin's index records
        if entries is None:
            if not self.folder.is_dir():
                raise ConfigError(f"dataset.images: {self.folder} is not a folder of images")
            named = []
            for path in sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                reason = _not_a_regular_file(path)
                if reason is None:
                    named.append((path.relative_to(self.folder).as_posix(), path))
                else:
                    self._left_out(f"{path}: {reason}; left out")
            if not named:
                raise ConfigError(
                    f"dataset.images: {self.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            mos_values = read_mos(Path(mos)) if mos else {}
            mos_label = str(mos)
        else:
            named = []
            for entry in entries:
                reason = _not_a_regular_file(entry.path)
                if reason is None:
                    named.append((entry.name, entry.path))
                else:
                    self._left_out(f"{entry.path}: {reason}; left out")
            if not named:
                raise ConfigError(f"dataset: {label} yields no image files")
            mos_values = {e.name: e.mos for e in entries if e.mos is not None}
            promised = {e.name: e.sha256 for e in entries if e.sha256}
            mos_label = label
        items = []
        for name, path in named:
            try:
                size = _probe(path, max_side)
            except NotAStillImage as exc:
                self._left_out(f"{path}: {exc}; left out")
                continue
            except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable image"
                self._left_out(f"{path}: not a readable image ({type(exc).__name__}: {exc}); left out")
                continue
            digest = _file_sha256(path)
            if promised.get(name, digest) != digest:
                self._left_out(
                    f"{path}: its sha256 {digest[:12]}... is not the {promised[name][:12]}... that "
                    f"{label} records for {name!r} (replaced or damaged); left out"
                )
                continue
            items.append(ImageItem(name, path, digest, size, mos_values.get(name)))
        if mos_values:
            names = {i.name for i in items}
            missing = sorted(n for n in names if n not in mos_values)
            extra = sorted(n for n in mos_values if n not in names and not (self.folder / n).is_file())
            if missing:
                self.problems.append(
                    f"{mos_label}: no MOS for {len(missing)} image(s), e.g. {missing[0]!r}; "
                    f"their SROCC entries are left out"
                )
            if extra and entries is None:
                self.problems.append(f"{mos_label}: {len(extra)} name(s) match no image, e.g. {extra[0]!r}; ignored")
            for msg in self.problems[-2:]:
                if msg.startswith(mos_label):
                    warnings.warn(msg, ImageWarning, stacklevel=2)
        if limit is not None:
            items = items[:limit]
        if not items:
            raise ConfigError(f"dataset.images: no readable image in {label}")
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
            out.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
        return out

    def load(self, batch: Sequence[ImageItem]) -> torch.Tensor:
        return torch.stack([read_image(item.path, self.max_side) for item in batch])

    def __iter__(self) -> Iterator[ImageItem]:
        return iter(self.items)


# -- dataset plugins ----------------------------------------------------------------------------------------


def data_dir() -> Path:
    """Where fetched datasets live: ``$IQADEF_DATA``, else ``$XDG_CACHE_HOME/iqadef/data`` (``~/.cache/...``).
    Each dataset has its own folder there, named after it (``<data dir>/koniq10k``)."""
    if os.environ.get("IQADEF_DATA"):
        return Path(os.environ["IQADEF_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "iqadef" / "data"


class DatasetPlugin:
    """The contract of a dataset plugin (registered through ``iqadef_register_datasets``).

    A dataset says what it yields (:meth:`entries`: image files, each with its MOS/DMOS from the dataset's
    own score file and its split), which splits it has, and where its files come from (:attr:`remote`:
    URLs, sizes, sha256 where known, archive kinds) and how they are laid out once fetched
    (:meth:`missing`: the files its layout needs that are not there). Options beyond the common registry
    keys are :attr:`params` (``iqadef.Param``), validated like a plugin's.
    """

    kind: ClassVar[str] = "dataset"
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: Long name, homepage and the licence / terms of use as the publisher states them (one line).
    title: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    #: Splits besides ``all`` (every image); empty: the dataset has no official split.
    splits: ClassVar[tuple[str, ...]] = ()
    #: What the scores are: ``mos`` (higher is better), ``dmos`` (lower is better), or None (no scores).
    scores: ClassVar[str | None] = "mos"
    params: ClassVar[tuple[Param, ...]] = ()
    #: Files to download (``iqadef data fetch NAME``), unpacked into the dataset's folder.
    remote: ClassVar[tuple[RemoteFile, ...]] = ()
    #: False: the dataset's files are not fetched into the data dir (``folder``, ``builtin``): no ``root``.
    fetchable: ClassVar[bool] = True

    def __init__(self, root: Path | None = None, *, base: Path | None = None, where: str = "dataset", **values: Any):
        self.where = where
        self.base = Path(base) if base is not None else Path.cwd()
        self.config: dict[str, Any] = resolve(self.params, values, where)
        self.root = Path(root).expanduser() if root is not None else data_dir() / self.name

    # -- what a plugin implements ------------------------------------------------------------------
    def missing(self) -> list[str]:
        """Paths (relative to :attr:`root`) the layout needs and that are absent; empty when present."""
        return []

    def entries(self) -> list[Entry]:
        """Every image of the dataset, sorted by name, with its MOS and split."""
        raise NotImplementedError

    def remote_files(self) -> tuple[RemoteFile, ...]:
        """The files to fetch for this configuration (default :attr:`remote`; a release option may choose)."""
        return self.remote

    def expected_count(self) -> int | None:
        """How many entries the publisher's release has in this configuration (None: not known). A fetch
        whose files yield another number is refused (a truncated score file parses, but is short)."""
        return None

    def layout_problems(self) -> list[str]:
        """What is wrong with the files once fetched, beyond presence (:meth:`missing`): the score file read
        whole (every value a number), the entry count the release has, every listed image file there.
        Empty: the dataset is present. A plugin may add checks of its own."""
        absent = self.missing()
        if absent:
            return [f"missing {', '.join(absent)}"]
        try:
            entries = self.entries()
        except IqadefError as exc:
            return [str(exc)]
        problems = []
        expected = self.expected_count()
        if expected is not None and len(entries) != expected:
            problems.append(
                f"its files list {len(entries)} images, the release has {expected} (a truncated or replaced file?)"
            )
        lost = [e for e in entries if not e.path.is_file()]
        if lost:
            problems.append(f"{len(lost)} of the {len(entries)} listed image files are absent, e.g. {lost[0].path}")
        return problems

    # -- shared behaviour ----------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse, before any work, a dataset whose files are not where they should be; say how to get them."""
        absent = self.missing()
        if not absent:
            return
        shown = ", ".join(absent[:3]) + (f" (+{len(absent) - 3} more)" if len(absent) > 3 else "")
        how = (
            f"run `iqadef data fetch {self.name}`"
            if self.fetchable and self.remote_files()
            else "see `iqadef data` for where to get it"
        )
        raise ConfigError(
            f"{self.where}: {self.name} is not in {self.root} (missing {shown}); {how}, or set "
            f"`root:` (or IQADEF_DATA) to the folder that holds it"
        )

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """For ``iqadef list datasets`` and ``iqadef data``."""
        return {
            "name": cls.name,
            "kind": cls.kind,
            "version": cls.version,
            "doc": (cls.__doc__ or "").strip(),
            "title": cls.title,
            "homepage": cls.homepage,
            "licence": cls.licence,
            "splits": ["all", *cls.splits],
            "scores": cls.scores,
            "params": [
                {
                    "name": p.name,
                    "type": p.type_name,
                    "default": p.default,
                    "allowed": p.allowed(),
                    "help": p.help,
                    "presets": list(p.presets),
                }
                for p in cls.params
            ],
            "remote": [
                {
                    "filename": r.filename,
                    "urls": list(r.urls),
                    "size": r.size,
                    "sha256": r.sha256,
                    "archive": r.archive,
                    "manual": r.manual,
                }
                for r in cls.remote
            ],
        }

    def __repr__(self) -> str:
        return f"<dataset {self.name} at {self.root}>"


#: Registry keys every dataset takes (plugin options come on top).
COMMON_KEYS = {
    "name": "the dataset plugin (`iqadef list datasets`); default `folder`",
    "split": "which split (`all` or one the dataset has)",
    "sample": "keep this many images, chosen at random with `seed` (the same ones every time)",
    "seed": "seed of `sample` (default 0; independent of the run's seed)",
    "max_side": "larger images are downscaled to fit (default 2048)",
    "root": "the folder holding the dataset's files (default: <IQADEF_DATA>/<name>)",
}


@dataclass
class DatasetConfig:
    """The registry's ``dataset:`` once validated: a plugin instance and how to subset it."""

    plugin: DatasetPlugin
    split: str = "all"
    sample: int | None = None
    seed: int = 0
    max_side: int = DEFAULT_MAX_SIDE
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> Path:
        """The folder the images are under (``RunConfig.images``)."""
        return Path(getattr(self.plugin, "images_dir", self.plugin.root))

    @property
    def mos(self) -> Path | None:
        return getattr(self.plugin, "mos_file", None)

    def entries(self) -> list[Entry]:
        """The plugin's entries of :attr:`split`, then the deterministic ``sample`` of them (sorted by name)."""
        entries = sorted(self.plugin.entries(), key=lambda e: e.name)
        if self.split != "all":
            entries = [e for e in entries if e.split == self.split]
            if not entries:
                raise ConfigError(
                    f"{self.plugin.where}.split: {self.plugin.name} has no image in split "
                    f"{self.split!r} under {self.plugin.root}"
                )
        if self.sample is not None:
            if self.sample > len(entries):
                raise ConfigError(
                    f"{self.plugin.where}.sample: {self.sample} is more than the {len(entries)} images "
                    f"of {self.plugin.name} (split {self.split}); lower it or remove it"
                )
            chosen = random.Random(self.seed).sample(range(len(entries)), self.sample)
            entries = [entries[i] for i in sorted(chosen)]
        return entries

    def open(self, limit: int | None = None) -> Dataset:
        """The :class:`Dataset` of the run (``--limit`` keeps the first ``limit`` images)."""
        if getattr(self.plugin, "plain_folder", False) and self.split == "all" and self.sample is None:
            return Dataset(self.images, self.mos, max_side=self.max_side, limit=limit)  # today's folder scan
        return Dataset(
            self.images,
            max_side=self.max_side,
            limit=limit,
            entries=self.entries(),
            label=f"{self.plugin.where} {self.plugin.name} ({self.plugin.root})",
        )

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` and an export's datasheet say about the data."""
        cls = type(self.plugin)
        return {
            "name": cls.name,
            "title": cls.title,
            "homepage": cls.homepage,
            "licence": cls.licence,
            "root": str(self.plugin.root),
            "split": self.split,
            "sample": self.sample,
            "seed": self.seed,
            "options": self.plugin.config,
        }


@renamed_registry_keyword
def parse_dataset(value: Any, base: Path, plugins: Any, where: str = "dataset") -> DatasetConfig:
    """Validate the registry's ``dataset:`` (docs/registry.md); every mistake is a ConfigError naming the key.

    Forms: absent (the bundled images); a string (a folder of images relative to the registry, ``builtin``,
    or the name of a dataset plugin when no such folder exists); a mapping with ``images`` (and ``mos``) and
    no ``name`` (a folder); a mapping with ``name`` (a dataset plugin) and the :data:`COMMON_KEYS` plus the
    plugin's options.
    """
    if value is None:
        value = {"name": "builtin"}
    if isinstance(value, str):
        names = set(plugins.names("datasets"))
        if value == "builtin" or (value in names and value != "folder" and not (base / value).expanduser().is_dir()):
            value = {"name": value}
        else:
            value = {"images": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: must be a mapping with `name` (a dataset, `iqadef list datasets`) or `images` "
            f"(a folder or `builtin`) and optional `mos`"
        )
    data = dict(value)
    name = data.pop("name", None)
    if name is None:
        name = "builtin" if data.get("images", "builtin") == "builtin" and "mos" not in data else "folder"
        if name == "builtin":
            data.pop("images", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: must be a dataset name (`iqadef list datasets`)")
    cls = plugins.get("datasets", name, where=f"{where}.name")
    common = {k: data.pop(k) for k in list(data) if k in COMMON_KEYS}
    allowed = {**COMMON_KEYS, **{p.name: p.help for p in cls.params}}
    if not cls.fetchable:
        allowed.pop("root")
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: unknown key for dataset {name!r}{did_you_mean(str(key), allowed)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
    if "root" in common and not cls.fetchable:
        raise ConfigError(f"{where}.root: dataset {name!r} takes no `root`; allowed: {', '.join(sorted(allowed))}")
    root = common.get("root")
    if root is not None and (not isinstance(root, str) or not root):
        raise ConfigError(f"{where}.root: must be a folder path")
    split = common.get("split", "all")
    if split not in ("all", *cls.splits):
        shown = ", ".join(["all", *cls.splits])
        raise ConfigError(f"{where}.split: {split!r} is not a split of {name}; one of {shown}")
    sample = common.get("sample")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ConfigError(f"{where}.sample: {sample!r} must be an integer >= 1 (how many images to keep), or null")
    seed = common.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}.seed: {seed!r} must be an integer")
    max_side = common.get("max_side", DEFAULT_MAX_SIDE)
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16:
        raise ConfigError(f"{where}.max_side: {max_side!r} must be an integer >= 16")
    plugin = cls((base / root).expanduser() if root else None, base=base, where=where, **data)
    plugin.check()
    return DatasetConfig(plugin, split=split, sample=sample, seed=seed, max_side=max_side, raw=dict(value))


# -- fetching -----------------------------------------------------------------------------------------------

#: In a dataset's folder: which remote files were fetched (and unpacked), with their size and sha256.
FETCHED = ".iqadef-fetched.json"
#: In a dataset's folder: where archives are downloaded before they are unpacked.
DOWNLOADS = ".downloads"


def fetched(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / FETCHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


#: In a dataset's folder: held (``flock``) while a fetch runs, so two fetches of one dataset do not interleave.
FETCH_LOCK = ".iqadef-fetch.lock"


def fetch_dataset(
    plugin: DatasetPlugin, *, progress: bool = True, keep_archives: bool = False, retries: int = 2, say=print
) -> Path:
    """Download ``plugin``'s remote files into its folder and unpack its archives; returns the folder.

    Each file goes through :func:`iqadef.core.fetch.fetch` (resumable, verified, refused on a mismatch, and
    refused when its content is not what it should be: :func:`iqadef.core.sniff.wrong_content`); an archive
    lands in ``<root>/.downloads`` first and is unpacked safely (:func:`~iqadef.core.fetch.extract`), then
    deleted unless ``keep_archives``. A file with no direct URL (a login, a request form) that is already in
    ``.downloads`` is unpacked; otherwise fetch says where to get it and where to put it.

    The dataset is present only when its layout checks out (:meth:`DatasetPlugin.layout_problems`); only then
    is what was fetched recorded in ``<root>/.iqadef-fetched.json`` with its sha256. A file is "already
    fetched" when it is recorded and the layout still checks out (and a kept file still has its recorded
    sha256: a changed one is refused); else it is fetched again, and its recorded sha256, if any, is the pin
    the new download must match. One fetch of a folder at a time (an ``flock`` on ``<root>/.iqadef-fetch.lock``).
    """
    if not plugin.fetchable:
        raise FetchError(f"dataset {plugin.name!r} is not fetched (it is {plugin.title or 'local'}); nothing to do")
    root = plugin.root
    if root.exists() and not root.is_dir():
        raise FetchError(
            f"dataset {plugin.name}: {root} is a file, not a folder; give --root (or `root:`) a folder, "
            f"or move the file"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = os.open(root / FETCH_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FetchError(
            f"dataset {plugin.name}: cannot create {root} ({exc.strerror or exc}); give --root (or "
            f"`root:`) a folder you can write"
        ) from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(
                f"dataset {plugin.name}: another `iqadef data fetch` into {root} is running; wait for it "
                f"to finish, then run this again"
            ) from None
        try:
            return _fetch_locked(plugin, root, progress=progress, keep_archives=keep_archives, retries=retries, say=say)
        except OSError as exc:  # writing the record, removing an archive: one line, not a traceback
            where = exc.filename or root
            raise FetchError(f"dataset {plugin.name}: {where}: {exc.strerror or exc}; fix it and fetch again") from None
    finally:
        os.close(lock)


def _fetch_locked(plugin: DatasetPlugin, root: Path, *, progress: bool, keep_archives: bool, retries: int, say) -> Path:
    done = fetched(root)
    present = not plugin.layout_problems()
    manual_needed = []
    downloaded: list[Path] = []  # what this fetch wrote and keeps: removed again if the layout is refused
    records = {}
    for remote in plugin.remote_files():
        if remote.archive is None:
            target = root / remote.filename
        else:
            target = root / DOWNLOADS / remote.filename
        record = done.get(remote.filename)
        recorded = record.get("sha256") if isinstance(record, dict) else None
        if (
            record is not None
            and remote.archive is None
            and target.is_file()
            and recorded
            and sha256_of(target) != recorded
        ):
            raise FetchError(
                f"{target}: its sha256 {sha256_of(target)} is not the {recorded} recorded when it was "
                f"fetched ({root / FETCHED}); it was changed since: delete it and fetch again"
            )
        if record is not None and present and (remote.archive is not None or target.is_file()):
            say(f"{remote.filename}: already fetched")
            continue
        pin, pinned_by = remote.sha256, "the pinned"
        if pin is None and recorded:  # first fetch's sha256: a later download must be the same file
            pin, pinned_by = (
                recorded,
                (f"the sha256 recorded at its first fetch (to accept a new version, delete {root / FETCHED}):"),
            )
        if target.is_file():
            digest = sha256_of(target)
            if not matches(digest, pin) or (remote.size is not None and target.stat().st_size != remote.size):
                raise FetchError(
                    f"{target}: sha256 {digest} / {target.stat().st_size} bytes do not match "
                    f"{pinned_by} {pin} / {remote.size} for {remote.filename}; delete it and fetch again"
                )
            _check_content(remote, target, placed=True)
        elif remote.manual or not remote.urls:
            if not plugin.missing():
                continue  # the layout is complete: the files were put in place by hand
            target.parent.mkdir(parents=True, exist_ok=True)  # the folder to drop the file into
            manual_needed.append(f"{remote.filename} ({remote.manual or 'no download URL'}; put it at {target})")
            continue
        else:
            if offline():
                raise FetchError(
                    f"{remote.filename}: downloads are disabled (IQADEF_OFFLINE is set); download "
                    f"{', '.join(remote.urls)} and put it at {target}, then run `iqadef data fetch "
                    f"{plugin.name}` again"
                )
            say(f"{remote.filename}: downloading from {remote.urls[0]}")
            fetch(
                replace(remote, sha256=pin),
                target,
                progress=progress,
                retries=retries,
                pinned_by=pinned_by,
                check=lambda part, remote=remote: _check_content(remote, part),
            )
            if remote.archive is None:
                downloaded.append(target)
        records[remote.filename] = {
            "size": target.stat().st_size,
            "sha256": sha256_of(target),
            "archive": remote.archive,
        }
        if remote.archive is not None:
            say(f"{remote.filename}: unpacking into {root}")
            records[remote.filename]["members"] = len(extract(target, root, remote.archive))
            if not keep_archives:
                target.unlink()
    if manual_needed:
        raise FetchError(
            f"dataset {plugin.name}: {len(manual_needed)} file(s) cannot be downloaded automatically: "
            + "; ".join(manual_needed)
            + f"; then run `iqadef data fetch {plugin.name}` again"
        )
    problems = plugin.layout_problems()
    if problems:
        for path in downloaded:
            path.unlink(missing_ok=True)
        removed = f" ({', '.join(p.name for p in downloaded)} removed again)" if downloaded else ""
        raise FetchError(
            f"dataset {plugin.name}: fetched, but {root} is not the published layout: "
            f"{'; '.join(' '.join(p.split()) for p in problems[:2])}{removed}; fetch again, and if it "
            f"persists the publisher's files may have changed: check {plugin.homepage or 'the publisher'}"
        )
    if records:
        done.update(records)
        atomic_write_bytes(root / FETCHED, json.dumps(done, indent=2, sort_keys=True).encode("utf-8"))
    return root


def _check_content(remote: RemoteFile, path: Path, placed: bool = False) -> None:
    """Refuse a file whose first bytes cannot start what ``remote`` is (an archive of its kind, a CSV...)."""

    expected = remote.archive or Path(remote.filename).suffix.lstrip(".").lower()
    with open(path, "rb") as f:
        head = f.read(4096)
    what = wrong_content(head, expected)
    if what is not None:
        if placed:
            raise FetchError(
                f"{path}: is {what}, not {expected.upper()} data for {remote.filename}; delete it and fetch again"
            )
        raise FetchError(
            f"{remote.filename}: the file received is {what}, not {expected.upper()} data; nothing was saved"
        )


def dataset_status(plugin: DatasetPlugin) -> dict[str, Any]:
    """What ``iqadef data`` shows for one dataset: present (:meth:`DatasetPlugin.layout_problems` finds nothing)
    or not, where, what is missing or wrong, where it comes from."""
    absent = plugin.missing() if plugin.fetchable else []
    problems = plugin.layout_problems() if plugin.fetchable and not absent else []
    return {
        "name": plugin.name,
        "title": plugin.title,
        "root": str(plugin.root),
        "present": not absent and not problems,
        "missing": absent,
        "problems": problems,
        "fetchable": plugin.fetchable,
        "licence": plugin.licence,
        "homepage": plugin.homepage,
        "files": [
            {
                "filename": r.filename,
                "urls": list(r.urls),
                "size": r.size,
                "sha256": r.sha256,
                "archive": r.archive,
                "manual": r.manual,
                "fetched": r.filename in fetched(plugin.root),
            }
            for r in plugin.remote_files()
        ],
    }
