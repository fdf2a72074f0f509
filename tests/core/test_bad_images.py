"""Odd and broken image files: each is read the documented way or left out with a clear message."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from iqadef import ConfigError
from iqadef.core import dataset as dataset_module
from iqadef.core.dataset import Dataset, ImageWarning, read_image, read_mos


def gradient(h: int = 12, w: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 128)], -1).astype(np.uint8)


def save(folder: Path, name: str, img: Image.Image, **kw) -> Path:
    path = folder / name
    img.save(path, **kw)
    return path


def test_modes_are_converted_to_rgb(tmp_path):
    rgb = Image.fromarray(gradient())
    cases = {
        "gray.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "plain.png": rgb,
    }
    for name, img in cases.items():
        t = read_image(save(tmp_path, name, img))
        assert t.shape == (3, 12, 16) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1, name
    gray = read_image(tmp_path / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert (read_image(tmp_path / "cmyk.jpg") - read_image(tmp_path / "plain.png")).abs().mean() < 0.05


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom transparent
    t = read_image(save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(t[:, 3, 0], torch.tensor([1.0, 1.0, 1.0]))


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    arr = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    t = read_image(path)
    assert t.shape == (3, 8, 8)
    assert t.max() == pytest.approx(1.0, abs=1 / 255) and t.min() == 0.0


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(gradient(10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    t = read_image(path)
    assert t.shape == (3, 20, 10)
    ds = Dataset(tmp_path)
    assert ds.items[0].size == (20, 10)


def test_tiny_and_huge_images(tmp_path):
    save(tmp_path, "one.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    big = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 8000), (90, 120, 200)).save(big, quality=80)
    with pytest.warns(
        ImageWarning, match="big.jpg: 8000x8000 is larger than dataset.max_side=512; downscaled to 512x512"
    ):
        ds = Dataset(tmp_path, max_side=512)
    sizes = {i.name: i.size for i in ds.items}
    assert sizes == {"big.jpg": (512, 512), "one.png": (1, 1)}
    t = ds.load([i for i in ds.items if i.name == "big.jpg"])
    assert t.shape == (1, 3, 512, 512)


def test_broken_files_are_left_out_with_their_name_and_reason(tmp_path):
    good = save(tmp_path, "good.png", Image.fromarray(gradient()))
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Dataset(tmp_path)
    assert [i.name for i in ds.items] == ["good.png"]
    messages = " ".join(str(w.message) for w in caught)
    for name in ("truncated.png", "notes.jpg", "empty.png"):
        assert name in messages
    assert len(ds.problems) == 3 and all("not a readable image" in p for p in ds.problems)


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="holds no images"):
        Dataset(tmp_path)
    with pytest.raises(ConfigError, match="is not a folder"):
        Dataset(tmp_path / "missing")
    (tmp_path / "bad.png").write_text("x")
    with pytest.warns(ImageWarning), pytest.raises(ConfigError, match="no readable image"):
        Dataset(tmp_path)


def test_mos_file_problems(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        save(folder, name, Image.fromarray(gradient()))
    mos = tmp_path / "mos.csv"
    mos.write_text("image,mos\na.png,3.5\nc.png,2.0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Dataset(folder, mos)
    text = " ".join(str(w.message) for w in caught)
    assert "no MOS for 1 image(s), e.g. 'b.png'" in text and "1 name(s) match no image, e.g. 'c.png'" in text
    assert {i.name: i.mos for i in ds.items} == {"a.png": 3.5, "b.png": None}
    mos.write_text("image,mos\na.png,3.5\na.png,4.0\n")
    with pytest.raises(ConfigError, match="'a.png' is listed twice"):
        read_mos(mos)
    mos.write_text("image,mos\na.png,good\n")
    with pytest.raises(ConfigError, match=r"mos.csv:2: mos 'good' for 'a.png' is not a number"):
        read_mos(mos)
    mos.write_text("picture,stars\na.png,3\n")
    with pytest.raises(ConfigError, match="needs a header"):
        read_mos(mos)


def _whole_image_reference(path: Path, max_side: int) -> np.ndarray:
    """The documented conversion done on the whole image at once (how read_image worked before strips)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
            img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
        img = img.convert("RGB")
        scale = max_side / max(img.size)
        if scale < 1:
            img = img.resize(
                (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX
            )
        return np.asarray(img)


@pytest.mark.parametrize("max_side", [64, 1000])
def test_conversion_in_strips_gives_the_pixels_of_a_whole_image_conversion(tmp_path, monkeypatch, max_side):
    """Huge images are converted strip by strip (bounded memory); the pixels must not depend on it."""
    monkeypatch.setattr(dataset_module, "_STRIP_PIXELS", 7 * 97)  # 7-row strips of a 97-wide image
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (83, 97, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (83, 97, 4), dtype=np.uint8), "RGBA")
    palette_alpha = rgb.convert("P")
    palette_alpha.info["transparency"] = 5
    cases = {
        "rgb.png": rgb,
        "grey.png": rgb.convert("L"),
        "bits.png": rgb.convert("1"),
        "palette.png": rgb.convert("P"),
        "palette_alpha.png": palette_alpha,
        "rgba.png": rgba,
        "la.png": rgba.convert("LA"),
        "deep.png": Image.fromarray(rng.integers(0, 65536, (83, 97), dtype=np.uint16)),
        "shallow16.png": Image.fromarray(rng.integers(0, 200, (83, 97), dtype=np.uint16)),
        "cmyk.tif": rgb.convert("CMYK"),
    }
    for name, img in cases.items():
        path = save(tmp_path, name, img)
        got = (read_image(path, max_side) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(got, _whole_image_reference(path, max_side)), name


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_huge_png_is_loaded_without_full_size_copies(tmp_path):
    """A 6000x6000 PNG: PIL's decoded image (4 bytes per pixel) is the only full-size buffer.

    Before: an orientation copy, an RGB copy and an alpha composite at full size (12000x12000 RGB PNG:
    1.6 GB above the decode's 0.55 GB; benchmarks/image_memory.py has the figures)."""
    side = 6000
    path = tmp_path / "huge.png"
    make = (
        "import sys, numpy as np; from PIL import Image; n = int(sys.argv[1]); r = (np.arange(n) % 256)"
        ".astype(np.uint8); a = np.empty((n, n, 3), np.uint8); a[..., 0] = r[None]; a[..., 1] = r[:, None]; "
        "a[..., 2] = 9; Image.fromarray(a).save(sys.argv[2], compress_level=1)"
    )
    subprocess.run([sys.executable, "-c", make, str(side), str(path)], check=True)
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's peak (kept across fork + exec)
    measure = (
        "import re, sys, warnings; from pathlib import Path; import torch; "
        "from iqadef.core.dataset import read_image; warnings.simplefilter('ignore'); "
        "peak = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
        "before = peak(); x = read_image(Path(sys.argv[1]), max_side=512); assert x.shape == (3, 512, 512); "
        "print((peak() - before) * 1024)"
    )
    done = subprocess.run([sys.executable, "-c", measure, str(path)], check=True, capture_output=True, text=True)
    decoded = side * side * 4
    assert int(done.stdout) < 1.4 * decoded, f"peak grew by {int(done.stdout) / 2**20:.0f} MB"


def test_odd_files_named_like_images_are_listed_with_a_reason(tmp_path):
    """A folder named x.png, a FIFO, a dangling symlink and an animated GIF: left out, each named, the
    FIFO never opened (opening it would block)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    save(folder, "good.png", Image.fromarray(gradient()))
    save(folder, "still.gif", Image.fromarray(gradient()).convert("P"))
    frames = [Image.fromarray(gradient()).convert("P"), Image.fromarray(255 - gradient()).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (folder / "x.png").mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Dataset(folder)
    assert [i.name for i in ds.items] == ["good.png", "still.gif"]
    problems = {Path(p.split(": ", 1)[0]).name: p for p in ds.problems}
    assert set(problems) == {"x.png", "pipe.png", "dangling.jpg", "animated.gif"}
    assert "a folder, not an image file" in problems["x.png"]
    assert "named pipe (FIFO)" in problems["pipe.png"] and "not opened" in problems["pipe.png"]
    assert "symbolic link to" in problems["dangling.jpg"] and "gone.jpg" in problems["dangling.jpg"]
    assert "has 2 frames" in problems["animated.gif"]
    assert all(p.endswith("left out") for p in ds.problems)
    assert sorted(str(w.message) for w in caught if issubclass(w.category, ImageWarning)) == sorted(ds.problems)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-32", "latin-1", "cp1252"])
def test_mos_file_in_common_encodings(tmp_path, encoding):
    name = "caf\u00e9\u2019s.png" if encoding not in ("latin-1",) else "caf\u00e9.png"
    text = f"image,mos\n{name},3.5\nb.png,4\n"
    mos = tmp_path / "mos.csv"
    if encoding == "utf-16-le-bom":
        mos.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    else:
        mos.write_bytes(text.encode(encoding))
    assert read_mos(mos) == {name: 3.5, "b.png": 4.0}


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not a text file (it is a PNG image)"),
        (b"PK\x03\x04" + b"\x00" * 40, "zip archive (an .xlsx workbook is one: export it as CSV)"),
        ("image,mos\na.png,1\n".encode("utf-16-le"), "if it is UTF-16 text, save it with a byte-order mark"),
        (codecs.BOM_UTF8 + b"image,mos\n\xff\xfe,1\n", "starts with a UTF-8 byte-order mark but byte"),
    ],
)
def test_mos_file_that_is_not_text_is_named(tmp_path, content, fragment):
    mos = tmp_path / "mos.csv"
    mos.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_mos(mos)
    assert str(mos) in str(info.value) and fragment in str(info.value)
