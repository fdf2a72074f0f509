"""An adaptive attack entry through the grid runner: one adversarial image per defence, the
`adaptive` column, and the side-by-side table in the report."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.report import ADAPTIVE_TITLE, adaptive_table, write_report

GRID = """
dataset: {{images: {images}}}
output: {output}
device: cpu
batch_size: 2
seed: 5
examples: 0
metrics: [{metric}]
attacks:
  - {{name: ifgsm, iters: 3, alpha: 0.0078431}}
  - {{name: ifgsm, iters: 3, alpha: 0.0078431, adaptive: bpda}}
defences: [no-defence, jpeg, color-quantization]
"""


@pytest.mark.slow
def test_adaptive_entry_attacks_each_defence_separately(tmp_path, small_image_dir, tiny_metric, registry):
    weights = tiny_metric.config.get("weights_path")
    metric = f"{{name: tiny-iqa, weights_path: {weights}}}" if weights else "tiny-iqa"
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(images=small_image_dir, output=tmp_path / "run", metric=metric))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    assert summary.failed == 0 and len(df) == 2 * 2 * 3

    adaptive, plain = df[df["adaptive"] == "bpda"], df[df["adaptive"] == "none"]
    assert len(adaptive) == len(plain) == 6
    assert set(adaptive["attack"]) == {plain["attack"].iloc[0] + "@bpda"}
    # non-adaptive: one x_a per image shared by the defences; adaptive: one per image and defence
    assert plain.groupby("image")["adv_path"].nunique().eq(1).all()
    assert adaptive.groupby("image")["adv_path"].nunique().eq(3).all()
    digest = lambda rel: hashlib.sha256((summary.run_dir / rel).read_bytes()).hexdigest()  # noqa: E731
    for _, group in adaptive.groupby("image"):
        by_defence = {row.defence: digest(row.adv_path) for row in group.itertuples()}
        assert by_defence["jpeg"] != by_defence["color-quantization"] != by_defence["no-defence"]
    # through the identity the adaptive attack is the plain one
    ident = df[df["defence"] == "no-defence"].pivot(index="image", columns="adaptive", values="f_def_adv")
    assert (ident["bpda"] - ident["none"]).abs().max() < 1e-4

    info = json.loads((summary.run_dir / "run.json").read_text())
    table = adaptive_table(df, info)
    assert list(table["defence"]) == ["no-defence", "jpeg", "color-quantization"]
    assert (table["n_images"] == 2).all() and table["gain_adaptive"].notna().all()
    assert abs(table.loc[table["defence"] == "no-defence", "gain_difference"].iloc[0]) < 1e-4
    written = write_report(summary.run_dir)
    for key in ("markdown", "html"):
        text = written[key].read_text()
        assert ADAPTIVE_TITLE in text and "bpda" in text.split(ADAPTIVE_TITLE)[1]
