"""``iqadef data fetch`` and ``iqadef weights`` on bad input: one line, exit status 2, no traceback, and
nothing half-unpacked (issue 24, item 11 and the smaller ones). The archives are put where a fetch looks
for them (``<root>/.downloads``) and downloads are off, so nothing goes to the network."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import random
import struct
import zipfile

import pytest

from iqadef.cli import main

ARCHIVE = "koniq10k_1024x768.zip"


def assert_one_line(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def patch_member(data: bytes, local_offset: int, central_offset: int, value: bytes) -> bytes:
    """Overwrite a field of the (only) member's local header and central directory entry."""
    out = bytearray(data)
    local = out.find(b"PK\x03\x04")
    central = out.find(b"PK\x01\x02")
    out[local + local_offset : local + local_offset + len(value)] = value
    out[central + central_offset : central + central_offset + len(value)] = value
    return bytes(out)


def placed(tmp_path, data: bytes):
    root = tmp_path / "koniq"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / ARCHIVE).write_bytes(data)
    return root


def fetch(root) -> int:
    return main(["data", "fetch", "koniq10k", "--root", str(root)])


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("IQADEF_OFFLINE", "1")


def untouched(root) -> bool:
    """Nothing unpacked, no staging folder left: only what the test put there (and the fetch's lock)."""
    return sorted(p.name for p in root.iterdir()) in ([".downloads"], [".downloads", ".iqadef-fetch.lock"])


def test_damaged_deflate_data(tmp_path, capsys):
    data = bytearray(zip_bytes({"1024x768/a.bin": random.Random(0).randbytes(1000) * 50}, zipfile.ZIP_DEFLATED))
    start = data.find(b"a.bin") + len("a.bin")
    data[start + 200 : start + 600] = b"\xff" * 400
    root = placed(tmp_path, bytes(data))
    assert_one_line(capsys, fetch(root), ARCHIVE, "is damaged")
    assert untouched(root)


def test_an_encrypted_member(tmp_path, capsys):
    data = patch_member(zip_bytes({"1024x768/a.jpg": b"x" * 100}), 6, 8, struct.pack("<H", 1))
    root = placed(tmp_path, data)
    assert_one_line(capsys, fetch(root), "is encrypted")
    assert untouched(root)


def test_an_unsupported_compression_method(tmp_path, capsys):
    data = patch_member(zip_bytes({"1024x768/a.jpg": b"x" * 100}), 8, 10, struct.pack("<H", 97))
    root = placed(tmp_path, data)
    assert_one_line(capsys, fetch(root), "compression method")
    assert untouched(root)


def test_root_naming_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert_one_line(capsys, fetch(tmp_path / "file"), "is a file, not a folder")


def test_a_malformed_option(tmp_path, capsys):
    code = main(["data", "fetch", "koniq10k", "--root", str(tmp_path), "-o", "resolution=[1024x768"])
    assert_one_line(capsys, code, "--option", "not valid YAML")


def test_a_second_fetch_of_one_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    root = placed(tmp_path, zip_bytes({"1024x768/a.jpg": b"x"}))
    held = os.open(root / ".iqadef-fetch.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_one_line(capsys, fetch(root), "another `iqadef data fetch`", "is running")
    finally:
        os.close(held)
    assert not (root / "1024x768").exists()


def test_a_full_disk_while_unpacking(tmp_path, capsys, monkeypatch):
    root = placed(tmp_path, zip_bytes({"1024x768/a.jpg": b"x" * 5000, "1024x768/b.jpg": b"y" * 5000}))
    import builtins

    real_open, calls = builtins.open, []

    def full_disk(path, mode="r", *args, **kwargs):  # the second member's file cannot be written
        if "w" in mode and ".iqadef-extract-" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk)
    assert_one_line(capsys, fetch(root), "the disk is full while unpacking", "nothing was unpacked")
    assert untouched(root) and len(calls) == 2


def test_weights_dir_naming_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "weights").write_text("x")
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert_one_line(capsys, main(["weights"]), "IQADEF_WEIGHTS_DIR", "is a file, not a folder")


def test_data_says_present_only_when_the_layout_checks_out(tmp_path, capsys):
    """A KonIQ-10k folder whose score file lists 2 images (the release has 10,073) is not "present"."""
    import json

    from ds_helpers import image

    root = tmp_path / "koniq"
    for name in ("a.jpg", "b.jpg"):
        image(root / "1024x768" / name, fmt="JPEG")
    (root / "koniq10k_scores_and_distributions.csv").write_text("image_name,MOS\na.jpg,3.1\nb.jpg,2.7\n")
    assert main(["data", "list", "koniq10k", "--root", str(root), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["datasets"][0]
    assert row["present"] is False and row["missing"] == []
    assert "its files list 2 images, the release has 10073" in row["problems"][0]
