"""Fetch against a local HTTP server on 127.0.0.1: checksum mismatch, a cut connection then resume (Range),
offline mode, unsafe archives, and a whole dataset fetched and unpacked."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from ds_helpers import Server

from iqadef.core.dataset import DatasetPlugin, Entry, fetch_dataset, fetched
from iqadef.core.fetch import (
    FetchError,
    Interrupted,
    RemoteFile,
    download,
    extract,
    part_path,
)

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checksum_mismatch_is_refused_and_nothing_kept(tmp_path):
    with Server({"f.bin": PAYLOAD}) as server:
        with pytest.raises(
            FetchError,
            match=r"f.bin: the downloaded file's sha256 .* does not match the pinned "
            r"0{64} for f.bin; nothing was saved",
        ):
            download(server.url("f.bin"), tmp_path / "f.bin", sha256="0" * 64, progress=False)
        with pytest.raises(FetchError, match=r"has 204800 bytes, f.bin should have 5"):
            download(server.url("f.bin"), tmp_path / "f.bin", size=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_cut_download_is_kept_and_resumed_with_range(tmp_path):
    target = tmp_path / "f.bin"
    with Server({"f.bin": PAYLOAD}, cut_once={"f.bin"}) as server:
        with pytest.raises(Interrupted, match=r"stopped after 102.4 KB of 204.8 KB.*run the same command again"):
            download(server.url("f.bin"), target, sha256=sha(PAYLOAD), progress=False, retries=0)
        assert not target.exists() and part_path(target).stat().st_size == len(PAYLOAD) // 2
        assert download(server.url("f.bin"), target, sha256=sha(PAYLOAD), progress=True) == target
        assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert target.read_bytes() == PAYLOAD and not part_path(target).exists()


def test_a_cut_download_resumes_within_one_call(tmp_path):
    with Server({"f.bin": PAYLOAD}, cut_once={"f.bin"}) as server:
        download(server.url("f.bin"), tmp_path / "f.bin", sha256=sha(PAYLOAD), progress=False)
        assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_unsafe_archive_members_are_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(archive({"ok.txt": b"x", "../evil.txt": b"y"}))
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=r"member '../evil.txt' would be written outside the data folder"):
        extract(bad, dest, "zip")
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []
    import tarfile

    tar = tmp_path / "bad.tar"
    with tarfile.open(tar, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(FetchError, match="member refused"):
        extract(tar, dest, "tar")


class Mini(DatasetPlugin):
    """A two-image dataset served from the test's server."""

    name = "mini"
    remote: tuple = ()

    def missing(self):
        return [] if (self.root / "mini" / "scores.csv").is_file() else ["mini/scores.csv"]

    def entries(self):
        return [Entry(n, self.root / "mini" / n, 1.0) for n in ("a.png", "b.png")]


def test_fetch_dataset_downloads_unpacks_records_and_respects_offline(tmp_path, monkeypatch):
    data = archive(
        {"mini/scores.csv": b"image,mos\na.png,1\nb.png,2\n", "mini/a.png": b"A" * 50000, "mini/b.png": b"B"}
    )
    with Server({"mini.zip": data}, cut_once={"mini.zip"}) as server:
        remote = RemoteFile("mini.zip", (server.url("mini.zip"),), sha256=sha(data), archive="zip")
        monkeypatch.setattr(Mini, "remote", (remote,))
        plugin = Mini(tmp_path / "root")
        monkeypatch.setenv("IQADEF_OFFLINE", "1")
        with pytest.raises(
            FetchError,
            match=r"mini.zip: downloads are disabled \(IQADEF_OFFLINE is set\); download "
            r"http://127.0.0.1:\d+/mini.zip and put it at .*\.downloads/mini.zip",
        ):
            fetch_dataset(plugin, progress=False, say=lambda _: None)
        assert server.ranges == []
        monkeypatch.delenv("IQADEF_OFFLINE")
        root = fetch_dataset(plugin, progress=False, say=lambda _: None)
        assert (root / "mini" / "a.png").read_bytes() == b"A" * 50000
        assert not (root / ".downloads" / "mini.zip").exists()
        assert fetched(root)["mini.zip"]["sha256"] == sha(data)
        said = []
        fetch_dataset(plugin, progress=False, say=said.append)  # nothing downloaded the second time
        assert said == ["mini.zip: already fetched"] and len(server.ranges) == 2


def test_a_manual_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Mini, "remote", (RemoteFile("mini.zip", archive="zip", manual="log in at https://x"),))
    plugin = Mini(tmp_path / "root")
    with pytest.raises(FetchError, match=r"mini.zip \(log in at https://x; put it at .*root/.downloads/mini.zip\)"):
        fetch_dataset(plugin, progress=False, say=lambda _: None)
    placed = tmp_path / "root" / ".downloads" / "mini.zip"
    placed.write_bytes(archive({"mini/scores.csv": b"image,mos\n", "mini/a.png": b"A", "mini/b.png": b"B"}))
    fetch_dataset(plugin, progress=False, say=lambda _: None)
    assert (tmp_path / "root" / "mini" / "scores.csv").is_file()
