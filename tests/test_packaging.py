"""The built distributions (sdist and wheel) carry no path of the machine that built them, and the metadata
the package declares: its version from iqadef/_version.py, static extras."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

from iqadef._version import __version__

ROOT = REPO_ROOT


@pytest.mark.slow
def test_sdist_and_wheel_metadata_hold_no_local_path(tmp_path):
    # a copy as a clean clone has it: no egg-info or build folder of an editable install
    tree = tmp_path / "clone"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("iqadef-*.tar.gz")
    (wheel,) = (tmp_path / "dist").glob("iqadef-*.whl")
    with tarfile.open(sdist) as tar:
        pkg_info = tar.extractfile(f"iqadef-{__version__}/PKG-INFO").read().decode()
    with zipfile.ZipFile(wheel) as whl:
        metadata = whl.read(f"iqadef-{__version__}.dist-info/METADATA").decode()
    for text in (pkg_info, metadata):
        assert "file://" not in text and "@ /" not in text
        assert str(tmp_path) not in text and str(ROOT) not in text and str(Path.home()) + "/" not in text
        fields = email.message_from_string(text)
        assert fields["Name"] == "iqadef" and fields["Version"] == __version__
        assert sorted(fields.get_all("Provides-Extra")) == ["bench", "ray", "test"]
        assert all(" @ " not in req for req in fields.get_all("Requires-Dist"))
