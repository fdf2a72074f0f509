"""Trained artefacts evaluated on their own training images are flagged: the shipped FCN weights (trained on the
default run's bundled images) and any checkpoint whose training record lists the image's sha256."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import torch

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.plan.trained import trained_images
from iqadef.plugins.certified.dms_iqa import Denoiser
from iqadef.plugins.defences.fcn import FCN, seen_images
from iqadef.report import write_report


def _grid(tmp_path, images: str, defences: str, certified: str = "") -> object:
    path = tmp_path / "grid.yaml"
    path.write_text(
        f"dataset: {{images: {images}}}\noutput: {tmp_path / 'run'}\nbatch_size: 2\nexamples: 0\n"
        f"metrics: [tiny-iqa]\nattacks: [{{name: fgsm}}]\ndefences: {defences}\n{certified}"
    )
    return load_run_config(path)


def test_the_shipped_fcn_is_flagged_on_the_bundled_images(tmp_path):
    cfg = _grid(tmp_path, "builtin", "[no-defence, fcn]")
    summary = run_grid(cfg, progress=False, limit=2)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    assert df.loc[df["defence"] == "fcn", "trained_on_image"].all()
    assert not df.loc[df["defence"] == "no-defence", "trained_on_image"].any()
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert any("defence 'fcn' was trained on 2 of this run's images" in p for p in info["dataset"]["problems"])
    page = write_report(summary.run_dir)["html"].read_text()
    assert "were in the training data of the metric or the defence" in page


def test_a_checkpoint_trained_elsewhere_is_not_flagged(tmp_path, image_dir):
    """FCN weights whose record lists other images: no cell of this run is marked; a record listing one of
    the run's images marks exactly that image's cells (purifier and certified defence alike)."""
    fcn_path, dms_path = tmp_path / "fcn.pt", tmp_path / "dms.pt"
    torch.save(FCN().state_dict(), fcn_path)
    torch.save({"model": Denoiser().state_dict(), "sigma": 0.05, "width": 32, "depth": 5}, dms_path)
    one = sorted(image_dir.glob("*.png"))[0]
    sha = hashlib.sha256(one.read_bytes()).hexdigest()
    fcn_path.with_suffix(".json").write_text(json.dumps({"data": {"images": [{"name": "x", "sha256": "0" * 64}]}}))
    dms_path.with_suffix(".json").write_text(json.dumps({"data": {"images": [{"name": one.name, "sha256": sha}]}}))
    certified = f"certified: [{{name: dms-iqa, n: 8, sigma: 0.05, eps: 0.01, weights_path: {dms_path}}}]\n"
    cfg = _grid(tmp_path, str(image_dir), f"[no-defence, {{name: fcn, weights_path: {fcn_path}}}]", certified)
    assert trained_images(cfg.metrics) == {}
    summary = run_grid(cfg, progress=False, limit=2)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    marked = df[df["trained_on_image"]]
    assert set(marked["image"]) == {one.name} and set(marked["defence"]) == {cfg.certified[0].label}


def test_trainers_record_the_images_they_saw():
    df = pd.DataFrame(
        {
            "image": ["b.png", "a.png", "c.png", "a.png", "d.png", "e.png"],
            "image_sha256": ["B", "A", "C", "A", "D", "E"],
        }
    )
    seen = seen_images(df)
    assert [(s["name"], s["role"]) for s in seen] == [
        ("b.png", "train"),
        ("a.png", "train"),
        ("c.png", "train"),
        ("d.png", "train"),
        ("e.png", "validation"),
    ]
    assert {s["sha256"] for s in seen} == {"A", "B", "C", "D", "E"}
