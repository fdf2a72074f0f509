"""``rs`` and ``ddrs`` through the real runner on the bundled images (tiny-iqa, the default registry): the report's
certified section draws the certified-accuracy-against-radius figure with one pair of curves per method, read from
the rows the run stored. ``ddrs`` uses a small diffusers DDPM folder (random weights) for the 2.2 GB checkpoint and
short n; the images are downscaled to 32 px (``max_side``) to keep the UNet cheap on a CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.report import write_report
from iqadef.report.certified import certified_curve, radius_defences

REGISTRY = """
dataset: {{name: builtin, max_side: 32}}
output: {output}
batch_size: 7
seed: 0
metrics: [tiny-iqa]
attacks: [{{name: ifgsm, iters: 1}}]
defences: [no-defence]
certified:
  - {{name: rs, n: 40, n0: 8, batch: 96}}
  - {{name: ddrs, model: {model}, n: 40, n0: 8, batch: 48}}
"""


@pytest.mark.slow
def test_rs_and_ddrs_on_the_bundled_images_draw_the_radius_figure(tmp_path):
    from diffusers import UNet2DModel

    model = tmp_path / "ddpm"
    UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).save_pretrained(model)
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY.format(output=tmp_path / "run", model=model))
    summary = run_grid(load_run_config(path), progress=False)
    assert summary.failed == 0
    df = pd.read_parquet(summary.run_dir / "results.parquet")
    labels = sorted(radius_defences(df, "tiny-iqa"), key=lambda label: not label.startswith("rs"))
    assert [label.split("[")[0] for label in labels] == ["rs", "ddrs"]  # one pair of curves each
    for label in labels:
        rows = df[df["defence"] == label]
        clean = rows.drop_duplicates("image")
        assert len(clean) == 14  # every bundled image
        radius = clean["cert_radius_clean"].to_numpy(dtype=float)
        certified = clean["cert_bin_clean"].to_numpy(dtype=float) >= 0
        kept = certified & (clean["cert_bin_clean"] == clean["cert_bin_f_clean"]).to_numpy()
        curve = certified_curve(df, "tiny-iqa", label, np.array([0.0, 0.05, 1.0]))
        assert curve["certified_share"].tolist() == pytest.approx(
            [float((certified & (radius >= r)).mean()) for r in (0.0, 0.05, 1.0)]
        )
        assert curve["certified_accuracy"].tolist() == pytest.approx(
            [float((kept & (radius >= r)).mean()) for r in (0.0, 0.05, 1.0)]
        )
        assert (radius[~certified] == 0).all() and (radius[certified] > 0).all()
    rs = df[df["defence"] == labels[0]].drop_duplicates("image")
    assert (rs["cert_bin_clean"] >= 0).sum() >= 7  # sigma 0.12 on tiny-iqa: most images certify a bin
    ddrs = df[df["defence"] == labels[1]].drop_duplicates("image")
    assert not np.allclose(
        ddrs["f_def_clean"].to_numpy(dtype=float), rs["f_def_clean"].to_numpy(dtype=float)
    ) or not np.allclose(ddrs["cert_radius_clean"].to_numpy(dtype=float), rs["cert_radius_clean"].to_numpy(dtype=float))
    written = write_report(summary.run_dir)
    figures = [k for k in written if k.startswith("figure:certified_radius_tiny-iqa")]
    assert len(figures) == 1 and written[figures[0]].stat().st_size > 1000
    html = written["html"].read_text()
    section = html[html.index("<section id='certified'>") :]
    section = section[: section.index("</section>")]
    assert "<h3>Certified accuracy against radius: tiny-iqa</h3>" in section
    assert "src='data:image/png;base64," in section
    assert all(label in section for label in labels)  # the certified table names both methods
