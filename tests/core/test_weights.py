"""Weight files: lookup order, downloads (temp file + rename, verified), and refusal of files that are not
plain checkpoints (web pages, corrupt data, wrong sha256, pickles that would run code)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from iqadef import WeightsError
from iqadef.core import weights as W
from iqadef.core.weights import (
    WeightSpec,
    cache_dir,
    candidate_paths,
    find_weights,
    install_file,
    load_checkpoint,
    load_state_dict_strict,
    load_weights,
    resolve_weights,
    sha256_of,
    verify,
)


def small_checkpoint(path: Path, value: float = 1.0) -> Path:
    torch.save({"model": OrderedDict(weight=torch.full((2, 3), value), bias=torch.zeros(2)), "k": [0.5]}, path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- lookup order ------------------------------------------------------------------------------------------


def test_cache_follows_torch_home(home):
    assert cache_dir() == home / "torch" / "hub" / "iqadef"


def test_lookup_order_explicit_then_env_folder_then_cache(home, monkeypatch):
    spec = WeightSpec("m.pth", urls=())
    cache_dir().mkdir(parents=True)
    cached = small_checkpoint(cache_dir() / "m.pth", 1.0)
    assert resolve_weights(spec) == cached
    offline = home / "offline"
    offline.mkdir()
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(offline))
    assert candidate_paths(spec) == [offline / "m.pth", cached]
    assert resolve_weights(spec) == cached  # env folder empty: falls through to the cache
    in_env = small_checkpoint(offline / "m.pth", 2.0)
    assert find_weights(spec) == in_env and resolve_weights(spec) == in_env
    explicit = small_checkpoint(home / "elsewhere.pth", 3.0)
    assert resolve_weights(spec, explicit) == explicit
    assert load_weights(spec, explicit)["model"]["weight"][0, 0] == 3.0


def test_missing_explicit_file_is_named(home):
    with pytest.raises(WeightsError, match=r"nope\.pth.*weights_path.*does not exist"):
        resolve_weights(WeightSpec("m.pth", urls=()), home / "nope.pth")


def test_offline_message_names_expected_paths_and_url(home, monkeypatch):
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(home / "offline"))
    spec = WeightSpec("m.pth", urls=("https://example.invalid/m.pth",))
    with pytest.raises(WeightsError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert str(home / "offline" / "m.pth") in message and str(cache_dir() / "m.pth") in message
    assert "https://example.invalid/m.pth" in message and "IQADEF_OFFLINE" in message


# -- refusing bad files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html><html><head><title>Google Drive</title>",
        b"\n  <html><body>Too many users have viewed this file</body></html>",
    ],
)
def test_web_page_is_refused(tmp_path, content):
    page = tmp_path / "p1q2.pth"
    page.write_bytes(content)
    with pytest.raises(WeightsError, match="web page, not a checkpoint"):
        load_checkpoint(page)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 100])
def test_empty_or_corrupt_file_is_refused(tmp_path, content):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    with pytest.raises(WeightsError, match="empty|is not a PyTorch checkpoint \\(binary data"):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    "content, what",
    [
        (
            b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
            "a text file, starting 'root:x:0:0:root:/root:/bin/bash'",
        ),  # what /etc/passwd holds
        (b"hello, these are my notes\n", "a text file, starting 'hello, these are my notes'"),  # KeyError: 101 before
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "a PNG image"),
    ],
)
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, content, what):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path} is not a PyTorch checkpoint ({what}; torch.load: ")
    assert "written by torch.save" in str(info.value)


def test_a_folder_is_no_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="is a folder, not a PyTorch checkpoint"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint_is_refused(tmp_path):
    good = small_checkpoint(tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(cut)


def test_sha256_mismatch_is_refused(home):
    path = small_checkpoint(home / "m.pth")
    good = WeightSpec("m.pth", urls=(), sha256=sha(path).upper())
    verify(path, good)  # case does not matter
    assert sha256_of(path) == sha(path)
    bad = WeightSpec("m.pth", urls=(), sha256="0" * 64)
    with pytest.raises(WeightsError, match=f"sha256 {sha(path)} does not match the pinned {'0' * 64}"):
        resolve_weights(bad, path)
    with pytest.raises(WeightsError, match="does not match"):
        install_file(path, bad)
    assert not (cache_dir() / "m.pth").exists()
    verify(path, WeightSpec("m.pth", urls=(), sha256=sha(path)[:8]))  # a prefix pin, as torchvision's names
    with pytest.raises(WeightsError, match="does not match the pinned"):
        verify(path, WeightSpec("m.pth", urls=(), sha256=("0" if sha(path)[0] != "0" else "1") + sha(path)[1:8]))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("allow_numpy", [False, True])
def test_pickle_that_would_run_code_is_refused(tmp_path, legacy, allow_numpy):
    marker = tmp_path / "was_run"
    evil = tmp_path / "evil.pth"
    torch.save(
        {"model": {"w": torch.zeros(1)}, "k": _RunsCode(marker)}, evil, _use_new_zipfile_serialization=not legacy
    )
    with pytest.raises(WeightsError, match=r"refused to load.*os\.makedirs"):
        load_checkpoint(evil, allow_numpy=allow_numpy)
    assert not marker.exists()


# -- numpy values (old checkpoints may store calibration constants as numpy) --------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_numpy_numbers_need_allow_numpy(tmp_path, legacy):
    path = tmp_path / "np.pth"
    torch.save(
        {
            "k": [np.float64(0.5), np.float32(1.5)],
            "b": np.array([1.0, 2.0]),
            "n": np.int64(3),
            "model": {"w": torch.ones(2)},
        },
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(WeightsError, match="numpy"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, allow_numpy=True)
    assert loaded["k"] == [0.5, 1.5] and loaded["b"].tolist() == [1.0, 2.0] and loaded["n"] == 3


def test_allow_numpy_still_refuses_object_arrays(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"b": np.array([1, "x"], dtype=object)}, path)
    with pytest.raises(WeightsError, match="refused to load"):
        load_checkpoint(path, allow_numpy=True)


# -- downloads ---------------------------------------------------------------------------------------------


def test_download_from_file_url_lands_by_rename_and_verifies(home, monkeypatch):
    source = small_checkpoint(home / "served.pth", 7.0)
    spec = WeightSpec("m.pth", urls=(source.as_uri(),), sha256=sha(source))
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(W.os, "replace", spy)
    path = resolve_weights(spec, progress=False)
    assert path == cache_dir() / "m.pth" and path.read_bytes() == source.read_bytes()
    ((tmp, final),) = renames
    assert final == path and tmp.parent == path.parent and tmp.name.endswith(".part") and not tmp.exists()
    assert sorted(p.name for p in cache_dir().iterdir()) == ["m.pth"]
    assert load_checkpoint(path)["model"]["weight"][0, 0] == 7.0
    assert resolve_weights(spec) == path  # second time: found in the cache


def test_download_with_wrong_sha256_leaves_nothing(home):
    source = small_checkpoint(home / "served.pth")
    spec = WeightSpec("m.pth", urls=(source.as_uri(),), sha256="f" * 64)
    with pytest.raises(WeightsError, match=r"served\.pth: the downloaded file's sha256 .* nothing was saved"):
        resolve_weights(spec, progress=False)
    assert list(cache_dir().iterdir()) == []


def test_downloaded_web_page_is_refused_and_not_kept(home):
    page = home / "page.html"
    page.write_text("<!doctype html><html><body>quota exceeded</body></html>")
    with pytest.raises(WeightsError, match="web page"):
        resolve_weights(WeightSpec("m.pth", urls=(page.as_uri(),)), progress=False)
    assert list(cache_dir().iterdir()) == []


def test_failed_url_falls_back_to_the_next(home):
    source = small_checkpoint(home / "served.pth")
    spec = WeightSpec("m.pth", urls=((home / "missing.pth").as_uri(), source.as_uri()))
    assert resolve_weights(spec, progress=False).read_bytes() == source.read_bytes()


def test_download_over_loopback_http_with_progress(home):
    source = small_checkpoint(home / "served.pth", 5.0)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(home), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/served.pth"
        path = resolve_weights(WeightSpec("m.pth", urls=(url,), sha256=sha(source)), progress=True)
    finally:
        server.shutdown()
        server.server_close()
    assert path == cache_dir() / "m.pth" and sha(path) == sha(source)


# -- strict state-dict loading -----------------------------------------------------------------------------


def test_state_dict_mismatches_are_named():
    module = nn.Linear(3, 2)
    with pytest.raises(WeightsError, match=r"missing keys \[bias\], unexpected keys \[extra\]"):
        load_state_dict_strict(module, {"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, "toy")
    with pytest.raises(WeightsError, match="toy: .*size mismatch for weight"):
        load_state_dict_strict(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "toy")


def test_assign_fills_a_meta_module():
    with torch.device("meta"):
        module = nn.Linear(3, 2)
    state = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    load_state_dict_strict(module, state, "toy", assign=True)
    assert not module.weight.is_meta and module(torch.ones(1, 3)).tolist() == [[3.0, 3.0]]


# -- explicit paths are checked before any work ------------------------------------------------------------


class _WithWeights:
    """The parts of a plugin that weights.py looks at."""

    kind = "metric"
    label = "toy"

    def __init__(self, sources, **config):
        self.sources, self.config = sources, config

    def weights_in_use(self):
        return self.sources


def test_explicit_weight_files_are_the_paths_the_user_gave(tmp_path):
    spec = WeightSpec("m.pth", urls=(), param="backbone_path")
    packaged = tmp_path / "packaged.pt"
    mine = tmp_path / "mine.pt"
    assert W.explicit_weight_files(_WithWeights((spec, packaged), backbone_path=None)) == []
    assert W.explicit_weight_files(_WithWeights((spec,), backbone_path=str(mine))) == [("backbone_path", mine)]
    assert W.explicit_weight_files(_WithWeights((mine,), weights_path=str(mine))) == [("weights_path", mine)]


def test_fetch_missing_refuses_a_missing_explicit_file_before_any_work(offline_home, tmp_path):
    plugin = _WithWeights((WeightSpec("m.pth", urls=()),), weights_path=str(tmp_path / "nope.pt"))
    with pytest.raises(
        WeightsError,
        match=r"metric 'toy': weights file .*nope\.pt \(given as `weights_path:`\) "
        r"does not exist",
    ):
        W.fetch_missing([plugin])
