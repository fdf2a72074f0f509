"""Make iqadef's bundled test images (``src/iqadef/data/images/*.png``) from scikit-image's sample data.

Only files that ship inside the scikit-image wheel (its ``skimage/data`` folder) are used, read
directly from disk, so this never touches the network (the pooch-downloaded extras are not used).
Every output is a 256x256 RGB PNG so that all bundled images batch together; grayscale sources are
replicated to three channels. Sources and licences are listed in ``LICENSES.md`` next to the images.

Run from the repository root (needs scikit-image, a test dependency)::

    python scripts/make_bundled_images.py
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

SIZE = 256
DATA_DIR = Path(skimage.data.__file__).parent
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "iqadef" / "data" / "images"


@dataclass(frozen=True)
class Source:
    """One bundled image: a square crop ``(top, left, side)`` of a scikit-image file, resized to 256."""

    name: str
    filename: str
    crop: tuple[int, int, int] | None  # None: the largest centred square
    what: str
    licence: str


SOURCES = (
    Source("astronaut", "astronaut.png", None, "Eileen Collins, NASA portrait (whole image)",
           "public domain (NASA; 'no known copyright restrictions')"),
    Source("astronaut_detail", "astronaut.png", (256, 256, 256), "astronaut image, lower-right quarter "
           "(flag, suit), native resolution", "public domain (NASA)"),
    Source("chelsea", "chelsea.png", None, "Chelsea the cat (centred square)",
           "CC0 (photographer Stefan van der Walt)"),
    Source("coffee", "coffee.png", None, "coffee cup, Pikolo Espresso Bar (centred square)",
           "CC0 (photographer Rachel Michetti)"),
    Source("coffee_detail", "coffee.png", (40, 200, 256), "coffee cup, rim and saucer, native resolution",
           "CC0 (photographer Rachel Michetti)"),
    Source("rocket", "rocket.jpg", None, "DSCOVR launch on Falcon 9, SpaceX (centred square)",
           "public domain (released by SpaceX)"),
    Source("hubble", "hubble_deep_field.jpg", (100, 250, 512), "Hubble eXtreme Deep Field (512 px crop)",
           "public domain (NASA)"),
    Source("retina", "retina.jpg", (300, 300, 811), "fundus photograph of a retina (central crop)",
           "CC0 1.0 (Mikael Häggström, Wikimedia Commons)"),
    Source("ihc", "ihc.png", None, "immunohistochemistry stain of colonic glands (CMMI)",
           "no known copyright restrictions"),
    Source("camera", "camera.png", None, "'camera' photograph, grayscale converted to RGB",
           "CC0 (photographer Lav Varshney)"),
    Source("brick", "brick.png", None, "brick wall texture, grayscale converted to RGB",
           "CC0 (CC0Textures 'Bricks25')"),
    Source("grass", "grass.png", None, "grass texture, grayscale converted to RGB",
           "CC0 (DeviantArt user linolafett, 'Grass 01')"),
    Source("gravel", "gravel.png", None, "gravel texture, grayscale converted to RGB",
           "CC0 (CC0Textures 'Gravel04')"),
    Source("coins", "coins.png", None, "Greek coins from Pompeii, Brooklyn Museum; grayscale converted to RGB",
           "no known copyright restrictions"),
)


def make(source: Source) -> Image.Image:
    path = DATA_DIR / source.filename
    if not path.is_file():
        raise SystemExit(f"{path} is missing: this script only uses files shipped in the scikit-image wheel")
    image = Image.open(path).convert("RGB")  # grayscale sources: the gray value in all three channels
    width, height = image.size
    if source.crop is None:
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
    else:
        top, left, side = source.crop
        if top + side > height or left + side > width:
            raise SystemExit(f"{source.name}: crop {source.crop} does not fit {source.filename} ({width}x{height})")
    image = image.crop((left, top, left + side, top + side))
    if side != SIZE:
        image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return image


def licences_table() -> str:
    rows = [
        "# Bundled images",
        "",
        f"{len(SOURCES)} RGB PNG images, each {SIZE}x{SIZE}, made by `scripts/make_bundled_images.py` from the",
        "sample images that ship inside the scikit-image wheel (`skimage/data/`). Each is a square crop of the",
        f"source, resized to {SIZE}x{SIZE} with Lanczos filtering where the crop is larger. Grayscale sources were",
        "converted to RGB by repeating the gray channel.",
        "",
        "Licences as stated in the docstrings of the corresponding `skimage.data` functions (scikit-image",
        "0.26); scikit-image itself is BSD-3-Clause.",
        "",
        "| file | source file (skimage/data) | crop (top, left, side) | what | licence |",
        "|---|---|---|---|---|",
    ]
    for s in SOURCES:
        crop = "centred square" if s.crop is None else f"{s.crop}"
        rows.append(f"| {s.name}.png | {s.filename} | {crop} | {s.what} | {s.licence} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: the package's)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for source in SOURCES:
        target = args.out / f"{source.name}.png"
        image = make(source)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        image.save(target, optimize=True)
        total += target.stat().st_size
        print(f"{target.name:24s} {np.asarray(image).std():6.1f} std  {target.stat().st_size / 1024:7.1f} KiB")
    (args.out / "LICENSES.md").write_text(licences_table(), encoding="utf-8")
    print(f"{len(SOURCES)} images, {total / 2**20:.2f} MiB in {args.out}")


if __name__ == "__main__":
    main()
