"""The pyiqa adapter (plugins/iqadef-pyiqa): real pyiqa metrics through iqadef's plugin registry.

No download anywhere: PIQE and entropy need no file; NIQE gets a parameter file and CNNIQA a random
checkpoint of its architecture, placed in $IQADEF_WEIGHTS_DIR under the names pyiqa asks for, and loaded
by pyiqa's own code. Skipped when the `pyiqa` extra is not installed (CI installs it).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_paths import REPO_ROOT

pyiqa = pytest.importorskip("pyiqa")
adapter = pytest.importorskip("iqadef_pyiqa")

from iqadef import WeightsError  # noqa: E402
from iqadef.core.plugins import InstalledPlugins  # noqa: E402
from iqadef_pyiqa import NotDifferentiable, catalog  # noqa: E402

CNNIQA_FILE = "CNNIQA_koniq10k-e6f14c91.pth"
NIQE_FILE = "niqe_modelparameters.mat"


@pytest.fixture(scope="module")
def registry():
    return InstalledPlugins()


@pytest.fixture()
def weights(tmp_path, monkeypatch) -> Path:
    """An empty offline folder and cache; downloads forbidden."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("IQADEF_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("IQADEF_OFFLINE", "1")
    return folder


def write_niqe_params(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIQE model (mean, covariance of the 36 features) fitted to nothing in particular but valid."""
    import scipy.io

    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    mu, cov = rng.normal(size=(1, 36)), a @ a.T / 36 + np.eye(36)
    scipy.io.savemat(folder / NIQE_FILE, {"mu_prisparam": mu, "cov_prisparam": cov})
    return mu, cov


def write_cnniqa_checkpoint(folder: Path) -> torch.nn.Module:
    """Random weights of pyiqa's CNNIQA in the layout its loader reads ({'params': state_dict})."""
    from pyiqa.archs.cnniqa_arch import CNNIQA

    torch.manual_seed(0)
    net = CNNIQA(pretrained=None).eval()
    torch.save({"params": net.state_dict()}, folder / CNNIQA_FILE)
    return net


def images(b=2, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, size // 8, size // 8, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + 0.05 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


def test_catalogue_directions_ranges_and_exclusions(registry):
    names = registry.names("metrics")
    assert {"pyiqa-piqe", "pyiqa-niqe", "pyiqa-cnniqa", "pyiqa-musiq", "pyiqa-entropy"} <= set(names)
    assert not {"pyiqa-fid", "pyiqa-inception_score", "pyiqa-clipscore"} & set(names)
    niqe, musiq_ava = registry.get("metrics", "pyiqa-niqe"), registry.get("metrics", "pyiqa-musiq-ava")
    assert (niqe.higher_is_better, niqe.range) == (False, (0.0, 100.0))
    assert (musiq_ava.higher_is_better, musiq_ava.range) == (True, (1.0, 10.0))
    assert registry.get("metrics", "pyiqa-pi").range == catalog.ASSUMED_RANGES["pi"][0]
    assert catalog.parse_range("~-1, ~2") == (-1.0, 2.0) and catalog.parse_range("0, ~") is None
    reg = registry.registration("metrics", "pyiqa-niqe")
    assert reg.plugin.distribution == "iqadef-pyiqa"
    assert [w.filename for w in niqe.weights] == [NIQE_FILE]


@pytest.mark.parametrize("name", ["piqe", "entropy"])
def test_metrics_that_need_no_file_score_as_pyiqa(registry, weights, name):
    metric = registry.get("metrics", f"pyiqa-{name}")().load("cpu")
    x = images()
    with torch.no_grad():
        ours = metric.score(x)
        theirs = pyiqa.create_metric(name, device="cpu")(x).reshape(-1)
    assert ours.shape == (2,)
    torch.testing.assert_close(ours, theirs)
    assert not metric.differentiable


@pytest.mark.parametrize("name", ["piqe", "entropy"])
def test_gradient_attack_on_a_non_differentiable_metric_says_so(registry, weights, name):
    metric = registry.get("metrics", f"pyiqa-{name}")().load("cpu")
    attack = registry.get("attacks", "ifgsm")(iters=1)
    with pytest.raises(NotDifferentiable, match=rf"pyiqa-{name}.*not differentiable"):
        attack.run(metric, images(), seed=0)


def test_niqe_reads_its_parameter_file_from_the_iqadef_folder(registry, weights):
    from pyiqa.archs.niqe_arch import calculate_niqe

    mu, cov = write_niqe_params(weights)
    metric = registry.get("metrics", "pyiqa-niqe")().load("cpu")
    x = images(size=192)
    expected = calculate_niqe(x, 0, True, "yiq", torch.from_numpy(mu.ravel()), torch.from_numpy(cov)).reshape(-1)
    torch.testing.assert_close(metric.score(x).detach(), expected)


def test_cnniqa_random_checkpoint_loads_through_pyiqa(registry, weights):
    net = write_cnniqa_checkpoint(weights)
    metric = registry.get("metrics", "pyiqa-cnniqa")().load("cpu")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(metric.score(x), net(x).reshape(-1))
    assert metric.key() == registry.get("metrics", "pyiqa-cnniqa")().key()


@pytest.mark.parametrize("name", ["niqe", "cnniqa"])
def test_ifgsm_improves_each_differentiable_metric_within_its_budget(registry, weights, name):
    write_niqe_params(weights) if name == "niqe" else write_cnniqa_checkpoint(weights)
    metric = registry.get("metrics", f"pyiqa-{name}")().load("cpu")
    attack = registry.get("attacks", "ifgsm")(eps=8 / 255, iters=5, alpha=2 / 255)
    x = images(size=192 if name == "niqe" else 96)
    x_adv = attack.run(metric, x.clone(), seed=0)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        before, after = metric.score(x), metric.score(x_adv)
    better = before - after if not metric.higher_is_better else after - before
    assert (better > 0).all(), (name, before, after)


def test_missing_file_offline_names_file_url_and_folder(registry, weights):
    with pytest.raises(WeightsError, match=rf"{CNNIQA_FILE}.*huggingface.co.*{weights}"):
        registry.get("metrics", "pyiqa-cnniqa")().load("cpu")


def test_a_checkpoint_holding_code_is_refused_before_pyiqa_loads_it(registry, weights):
    (weights / CNNIQA_FILE).write_bytes(pickle.dumps({"params": os.system}))
    with pytest.raises(WeightsError, match="refused to load"):
        registry.get("metrics", "pyiqa-cnniqa")().load("cpu")


def test_pyiqa_is_left_as_it_was_after_loading(registry, weights):
    from pyiqa.archs import arch_util
    from pyiqa.utils import download_util

    write_cnniqa_checkpoint(weights)
    before = (arch_util.load_file_from_url, download_util.DEFAULT_CACHE_DIR)
    registry.get("metrics", "pyiqa-cnniqa")().load("cpu")
    assert (arch_util.load_file_from_url, download_util.DEFAULT_CACHE_DIR) == before


def _cli(*args, env, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "iqadef", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.mark.slow
def test_cli_lists_and_runs_a_grid_with_pyiqa_metrics(weights, tmp_path):
    from PIL import Image

    write_cnniqa_checkpoint(weights)
    write_niqe_params(weights)
    env = dict(os.environ)
    listed = json.loads(_cli("list", "metrics", "--json", env=env).stdout)
    rows = {m["name"]: m for m in (listed["metrics"] if isinstance(listed, dict) else listed)}
    assert rows["pyiqa-cnniqa"]["higher_is_better"] is True and rows["pyiqa-piqe"]["differentiable"] is False
    plugins = json.loads(_cli("plugins", "--json", env=env).stdout)["plugins"]
    ours = [p for p in plugins if p.get("distribution") == "iqadef-pyiqa"]
    assert ours and "pyiqa-niqe" in json.dumps(ours)

    folder = tmp_path / "images"
    folder.mkdir()
    for i, x in enumerate(images(b=2, size=192)):
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    (tmp_path / "grid.yaml").write_text(
        f"dataset: {{images: {folder}}}\noutput: {tmp_path / 'run'}\ndevice: cpu\nbatch_size: 2\n"
        "metrics: [pyiqa-cnniqa, pyiqa-niqe]\nattacks: [{name: ifgsm, params: {iters: 2}}]\n"
        "defences: [no-defence, median-blur]\n"
    )
    run = _cli("run", str(tmp_path / "grid.yaml"), env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    import pandas as pd

    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(table["metric"]) == {"pyiqa-cnniqa", "pyiqa-niqe"} and len(table) == 8
    assert table["error"].isna().all()


def test_the_built_distribution_ships_its_file_catalogue(tmp_path):
    """`pip install ./plugins/iqadef-pyiqa` installs the adapter as a wheel (not editable): known_files.json must be
    in it."""
    import shutil
    import zipfile

    # a copy as a clean clone has it: an egg-info left by an editable install would list the file itself
    adapter = tmp_path / "iqadef-pyiqa"
    shutil.copytree(
        REPO_ROOT / "plugins" / "iqadef-pyiqa",
        adapter,
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
            str(adapter),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("iqadef_pyiqa-*.whl")
    assert "iqadef_pyiqa/known_files.json" in zipfile.ZipFile(wheel).namelist()
