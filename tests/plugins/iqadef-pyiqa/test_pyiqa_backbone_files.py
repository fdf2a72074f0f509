"""Every checkpoint a pyiqa metric opens goes through the weights-only load, whoever the loader is: here
torchvision's ``load_state_dict_from_url`` (``weights_only=False``) reading a backbone from
``<torch hub>/checkpoints``, the folder docs/pyiqa.md tells offline users to fill."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from repo_paths import REPO_ROOT

pyiqa = pytest.importorskip("pyiqa")
adapter = pytest.importorskip("iqadef_pyiqa")

from iqadef import WeightsError  # noqa: E402
from iqadef.core.plugins import InstalledPlugins  # noqa: E402


class _Payload:
    """Unpickling it creates a folder: proof that code in the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("layout", ["legacy pickle", "torch.save zip"])
def test_a_torchvision_backbone_holding_code_is_refused_and_never_run(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    (tmp_path / "weights").mkdir()
    marker = tmp_path / "payload-ran"
    backbones = Path(torch.hub.get_dir()) / "checkpoints"
    backbones.mkdir(parents=True)
    target = backbones / "resnet18-f37072fd.pth"  # what pyiqa's paq2piq asks torchvision for
    if layout == "legacy pickle":
        target.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, target)
    assert not marker.exists()
    load_before = torch.load
    with pytest.raises(WeightsError, match="refused to load"):
        InstalledPlugins().get("metrics", "pyiqa-paq2piq")().load("cpu")
    assert not marker.exists(), "the checkpoint's code ran"
    assert torch.load is load_before  # put back after the metric is built


def test_the_adapters_metadata_states_pyiqas_non_commercial_licences(tmp_path):
    """Where the extra is installed (the wheel's metadata and README) and documented (docs/pyiqa.md)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = REPO_ROOT
    adapter_dir = tmp_path / "iqadef-pyiqa"
    shutil.copytree(
        root / "plugins" / "iqadef-pyiqa",
        adapter_dir,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(adapter_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("iqadef_pyiqa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    head = metadata.split("\n\n")[0]  # the header fields, before the README body
    assert "PolyForm-Noncommercial-1.0.0" in head and "CC-BY-NC-SA-4.0" in head
    readme = " ".join(metadata.split())
    assert "PolyForm Noncommercial License 1.0.0" in readme and "weights are CC BY-NC-SA 4.0" in readme
    docs = " ".join((root / "docs" / "pyiqa.md").read_text().split())
    assert "PolyForm Noncommercial License 1.0.0" in docs and "weights" in docs and "are CC BY-NC-SA 4.0" in docs
