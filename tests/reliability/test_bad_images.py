"""Odd and broken image files: each is read the documented way or left out with a clear message."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqadef import ConfigError
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
    with pytest.warns(ImageWarning, match="big.jpg: 8000x8000 is larger than dataset.max_side=512; downscaled to 512x512"):
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
    mos.write_text("file;quality\na.png;3\n")
    with pytest.raises(ConfigError, match="needs a header"):
        read_mos(mos)
