"""The downloader and the unpacker save only the publisher's file, and delete nothing of the user's: each
test here reproduces a way a fetch once stored something else (a damaged tar.gz, a range from the wrong
offset, two versions joined, a login page, a truncated CSV), deleted a user's folder, or filled the disk
(issue 24, items 1, 2, 6, 10 and the smaller ones). Files come from a loopback HTTP server (ds_helpers)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import tarfile
import zipfile

import pytest
from ds_helpers import Server

import iqadef.core.fetch as fetch_module
from iqadef.core.dataset import DatasetPlugin, Entry, fetch_dataset, fetched, read_mos
from iqadef.core.fetch import FetchError, RemoteFile, download, extract, part_path

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes
QUIET = {"progress": False, "say": lambda _: None}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_of(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- 1. a damaged tar.gz --------------------------------------------------------------------------------------


def test_a_tar_gz_whose_compressed_bytes_are_damaged_is_refused(tmp_path):
    """Stored deflate blocks: a flipped byte in the member's data still decodes, only gzip's CRC-32 (in the
    trailer, after tar's end-of-archive blocks) tells; tarfile alone never reads it."""
    member = bytes(range(256)) * 400
    packed = bytearray(gzip.compress(tar_of({"mini/data.bin": member}), compresslevel=0))
    packed[len(packed) // 4] ^= 0xFF  # inside the member's bytes, same size
    archive = tmp_path / "mini.tar.gz"
    archive.write_bytes(bytes(packed))
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"the archive is damaged \(CRC check failed.*nothing was extracted"):
        extract(archive, dest, "tar.gz")
    assert list(dest.iterdir()) == []


def test_a_corrupt_tar_bz2_is_one_line(tmp_path):
    packed = bytearray(bz2.compress(tar_of({"a.bin": bytes(range(256)) * 400})))
    packed[len(packed) // 2 : len(packed) // 2 + 16] = b"\x00" * 16
    archive = tmp_path / "a.tar.bz2"
    archive.write_bytes(bytes(packed))
    with pytest.raises(FetchError) as caught:
        extract(archive, tmp_path / "dest", "tar.bz2")
    assert "\n" not in str(caught.value) and "the archive is damaged" in str(caught.value)


class Plain(DatasetPlugin):
    """A dataset of one archive holding ``mini/scores.csv`` and its images (read with read_mos)."""

    name = "plain"
    remote: tuple = ()
    count: int | None = None

    def missing(self):
        return [] if (self.root / "mini" / "scores.csv").is_file() else ["mini/scores.csv"]

    def expected_count(self):
        return self.count

    def entries(self):
        scores = read_mos(self.root / "mini" / "scores.csv")
        return [Entry(n, self.root / "mini" / n, v) for n, v in sorted(scores.items())]


def test_the_sha256_of_the_first_fetch_is_the_pin_of_the_next(tmp_path, monkeypatch):
    """No publisher pin: the first fetch records the archive's sha256; after the data is deleted, a fetch of
    a different file under that name is refused, and the marker did not say "already fetched"."""
    first = zip_of({"mini/scores.csv": b"image,mos\na.png,1\n", "mini/a.png": b"A"})
    files = {"mini.zip": first}
    with Server(files) as server:
        monkeypatch.setattr(Plain, "remote", (RemoteFile("mini.zip", (server.url("mini.zip"),), archive="zip"),))
        plugin = Plain(tmp_path / "root")
        fetch_dataset(plugin, **QUIET)
        assert fetched(plugin.root)["mini.zip"]["sha256"] == sha(first)
        import shutil

        shutil.rmtree(plugin.root / "mini")
        files["mini.zip"] = zip_of({"mini/scores.csv": b"image,mos\na.png,5\n", "mini/a.png": b"A"})
        with pytest.raises(FetchError, match=r"does not match the sha256 recorded at its first fetch"):
            fetch_dataset(plugin, **QUIET)
        assert not (plugin.root / "mini").exists()


def test_a_kept_file_changed_after_its_fetch_is_refused(tmp_path, monkeypatch):
    csv = b"image,mos\na.png,1.5\n"

    class Flat(Plain):
        def missing(self):
            return [] if (self.root / "scores.csv").is_file() else ["scores.csv"]

        def entries(self):
            return [Entry(n, self.root / "scores.csv", v) for n, v in read_mos(self.root / "scores.csv").items()]

    with Server({"scores.csv": csv}) as server:
        monkeypatch.setattr(Flat, "remote", (RemoteFile("scores.csv", (server.url("scores.csv"),)),))
        plugin = Flat(tmp_path / "root")
        fetch_dataset(plugin, **QUIET)
        (plugin.root / "scores.csv").write_bytes(b"image,mos\na.png,1\n")
        with pytest.raises(FetchError, match=r"scores.csv: its sha256 \w+ is not the \w+ recorded when it was fetched"):
            fetch_dataset(plugin, **QUIET)


# -- 2. the downloader ----------------------------------------------------------------------------------------


def test_a_206_from_another_offset_is_not_appended(tmp_path):
    """The server answers the resume with a range from byte 1000 instead of the half asked for: the part is
    not joined to it (before: truncated, and the tail saved as the whole file); the file is fetched whole."""
    target = tmp_path / "f.bin"
    with Server({"f.bin": PAYLOAD}, cut_once={"f.bin"}, range_from=1000) as server:
        download(server.url("f.bin"), target, progress=False)
        assert target.read_bytes() == PAYLOAD
        assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-", None]


def test_a_file_changed_between_attempts_is_downloaded_again_not_joined(tmp_path):
    """The resume carries If-Range with the first attempt's ETag; the server has a new version, so it sends
    it whole (200) and the part of version 1 is dropped."""
    target = tmp_path / "f.bin"
    files = {"f.bin": PAYLOAD}
    version2 = bytes(reversed(PAYLOAD))
    with Server(files, cut_once={"f.bin"}) as server:
        with pytest.raises(FetchError):
            download(server.url("f.bin"), target, progress=False, retries=0)
        files["f.bin"] = version2
        download(server.url("f.bin"), target, progress=False)
        assert target.read_bytes() == version2
        assert server.if_ranges[1] is not None and server.if_ranges[1].startswith('"')
    assert not part_path(target).exists() and not fetch_module.validator_path(target).exists()


def test_a_server_ignoring_if_range_is_caught_by_its_etag(tmp_path):
    """The server sends the range of its new version despite If-Range: the reply's ETag is not the one the
    part was started with, so the part is dropped and the file fetched whole."""
    target = tmp_path / "f.bin"
    files = {"f.bin": PAYLOAD}
    with Server(files, cut_once={"f.bin"}, ignore_if_range=True) as server:
        with pytest.raises(FetchError):
            download(server.url("f.bin"), target, progress=False, retries=0)
        files["f.bin"] = bytes(reversed(PAYLOAD))
        download(server.url("f.bin"), target, progress=False)
        assert target.read_bytes() == files["f.bin"]
        assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-", None]


def test_a_part_without_a_validator_is_not_resumed(tmp_path):
    """A part whose version is unknown (no validator recorded) is started over, never joined blindly."""
    target = tmp_path / "f.bin"
    part_path(target).write_bytes(b"\x00" * 1000)
    with Server({"f.bin": PAYLOAD}) as server:
        download(server.url("f.bin"), target, progress=False)
        assert server.ranges == [None]
    assert target.read_bytes() == PAYLOAD


def test_a_login_page_instead_of_the_score_csv_is_refused_and_fetched_again(tmp_path, monkeypatch):
    page = b"<!DOCTYPE html><html><body><form action=/login>Sign in</form></body></html>"
    files = {"scores.csv": page, "mini.zip": zip_of({"mini/a.png": b"A"})}

    class Split(Plain):
        def missing(self):
            return [] if (self.root / "scores.csv").is_file() and (self.root / "mini").is_dir() else ["scores.csv"]

        def entries(self):
            scores = read_mos(self.root / "scores.csv")
            return [Entry(n, self.root / "mini" / n, v) for n, v in sorted(scores.items())]

    with Server(files) as server:
        monkeypatch.setattr(
            Split,
            "remote",
            (
                RemoteFile("mini.zip", (server.url("mini.zip"),), archive="zip"),
                RemoteFile("scores.csv", (server.url("scores.csv"),)),
            ),
        )
        plugin = Split(tmp_path / "root")
        with pytest.raises(
            FetchError,
            match=r"scores.csv: the file received is a web page \(HTML\), not the file "
            r"itself: the server may want a login.*nothing was saved",
        ):
            fetch_dataset(plugin, **QUIET)
        assert not (plugin.root / "scores.csv").exists() and "scores.csv" not in fetched(plugin.root)
        files["scores.csv"] = b"image,mos\na.png,3.25\n"
        said = []
        fetch_dataset(plugin, progress=False, say=said.append)
        assert "scores.csv: already fetched" not in said
    assert read_mos(plugin.root / "scores.csv") == {"a.png": 3.25}


def test_a_csv_cut_short_without_content_length_is_refused(tmp_path, monkeypatch):
    """No Content-Length and the connection closes early: the transfer looks complete, but the score file
    has fewer rows than the release; refused, removed, not recorded, so the next fetch downloads it again."""
    rows = "".join(f"i{i:03d}.png,{i}.123456\n" for i in range(60))
    csv = ("image,mos\n" + rows).encode()

    class Listed(Plain):
        count = 60

        def missing(self):
            return [] if (self.root / "scores.csv").is_file() else ["scores.csv"]

        def entries(self):
            return [Entry(n, self.root / "scores.csv", v) for n, v in read_mos(self.root / "scores.csv").items()]

    with Server({"scores.csv": csv}, cut_once={"scores.csv"}, no_length={"scores.csv"}) as server:
        monkeypatch.setattr(Listed, "remote", (RemoteFile("scores.csv", (server.url("scores.csv"),)),))
        plugin = Listed(tmp_path / "root")
        with pytest.raises(FetchError, match=r"its files list \d+ images, the release has 60.*scores.csv removed"):
            fetch_dataset(plugin, **QUIET)
        assert not (plugin.root / "scores.csv").exists() and fetched(plugin.root) == {}
        fetch_dataset(plugin, **QUIET)
    assert (plugin.root / "scores.csv").read_bytes() == csv


def test_a_refused_redirect_leaves_no_part_file(tmp_path):
    redirect = {"f.bin": (302, {"Location": "file:///etc/passwd"})}
    with Server({}, pages=redirect) as server, pytest.raises(FetchError, match="download failed"):
        fetch_module.fetch(RemoteFile("f.bin", (server.url("f.bin"),)), tmp_path / "f.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_deleted_data_is_fetched_again_despite_the_marker(tmp_path, monkeypatch):
    data = zip_of({"mini/scores.csv": b"image,mos\na.png,1\n", "mini/a.png": b"A"})
    with Server({"mini.zip": data}) as server:
        monkeypatch.setattr(Plain, "remote", (RemoteFile("mini.zip", (server.url("mini.zip"),), archive="zip"),))
        plugin = Plain(tmp_path / "root")
        fetch_dataset(plugin, **QUIET)
        (plugin.root / "mini" / "scores.csv").unlink()
        said = []
        fetch_dataset(plugin, progress=False, say=said.append)
        assert said == [
            "mini.zip: downloading from " + server.url("mini.zip"),
            "mini.zip: unpacking into " + str(plugin.root),
        ]
    assert (plugin.root / "mini" / "scores.csv").is_file()


# -- 6. unpacking deletes nothing -----------------------------------------------------------------------------


def test_a_file_of_the_archive_where_the_user_has_a_folder_is_refused(tmp_path):
    dest = tmp_path / "dest"
    (dest / "mini" / "a.png").mkdir(parents=True)
    (dest / "mini" / "a.png" / "thesis.tex").write_text("years of work")
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_of({"mini/b.png": b"B", "mini/a.png": b"A"}))
    with pytest.raises(
        FetchError,
        match=r"holds a file mini/a.png where .*dest/mini/a.png is a folder; refused, "
        r"nothing was unpacked and nothing deleted",
    ):
        extract(archive, dest, "zip")
    assert (dest / "mini" / "a.png" / "thesis.tex").read_text() == "years of work"
    assert not (dest / "mini" / "b.png").exists()


# -- 10. size limits -------------------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_from_its_declared_sizes_and_the_override_lifts_it(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_of({"zeros.bin": bytes(70 * 2**20)}, zipfile.ZIP_DEFLATED))
    assert archive.stat().st_size < 200_000
    dest = tmp_path / "dest"
    with pytest.raises(
        FetchError,
        match=r"declares members of 73.4 MB, over the limit of 100 times the archive's "
        r".*set IQADEF_UNPACK_MAX_RATIO=off",
    ):
        extract(archive, dest, "zip")
    assert list(dest.iterdir()) == []
    monkeypatch.setenv("IQADEF_UNPACK_MAX_RATIO", "off")
    monkeypatch.setenv("IQADEF_UNPACK_MAX_BYTES", "1MB")
    with pytest.raises(FetchError, match=r"over the limit of 1.0 MB; .*set IQADEF_UNPACK_MAX_BYTES=off"):
        extract(archive, dest, "zip")


def test_a_tar_gz_bomb_is_refused_while_its_bytes_are_counted(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(tar_of({"zeros.bin": bytes(3 * 2**20)})))
    monkeypatch.setenv("IQADEF_UNPACK_MAX_BYTES", "2MB")
    with pytest.raises(FetchError, match=r"unpacks to more than 2.1 MB, over the limit of 2.0 MB"):
        extract(archive, tmp_path / "dest", "tar.gz")
    monkeypatch.setenv("IQADEF_UNPACK_MAX_BYTES", "off")
    assert extract(archive, tmp_path / "dest", "tar.gz") == ["zeros.bin"]
    monkeypatch.setenv("IQADEF_UNPACK_MAX_BYTES", "lots")
    with pytest.raises(FetchError, match=r"IQADEF_UNPACK_MAX_BYTES='lots': must be a size such as 500GB, or off"):
        extract(archive, tmp_path / "dest", "tar.gz")
