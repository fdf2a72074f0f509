"""A small protocol run end to end (tiny-iqa, a few bundled images): the worst case ranks `flip` next to
`no-defence`, a defence that hides its gradient while leaving the image almost unchanged is flagged (b) and
scored close to no defence, a defence with a real effect (median smoothing) is not flagged (b); the
verdict files, the report's headline and the console summary say so; absent the key, nothing changes."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest
import torch
from PIL import Image
from repo_paths import BUNDLED_IMAGES

from iqadef import Defence, hookimpl
from iqadef.analysis.verdict import study_rows
from iqadef.config.registry import load_run_config
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid
from iqadef.report import write_report

BUNDLED = BUNDLED_IMAGES
IMAGES = ("astronaut", "brick", "coffee", "chelsea")


class GradientHider(Defence):
    """Rounds to 8-bit levels (x_a is stored as 8 bits already: almost no change) and claims to be
    differentiable, so an attacker differentiating it gets torch.round's zero gradient: the obfuscated
    gradient of Athalye et al. 2018 in its simplest form."""

    name = "test-gradient-hider"
    differentiable = True

    def purify(self, images, *, seed=None):
        return torch.round(images * 255) / 255


@hookimpl
def iqadef_register_defences(register):
    register(GradientHider)


GRID = """
dataset: {{images: {images}}}
output: {output}
device: cpu
batch_size: 4
seed: 0
examples: 0
metrics: [tiny-iqa]
attacks: [ifgsm]
defences: [no-defence, flip, test-gradient-hider, {{name: median-blur, kernel_size: 5}}]
{extra}
"""


@pytest.fixture(scope="module")
def registry():
    module = types.ModuleType("iqadef_test_gradient_hider")
    module.iqadef_register_defences = iqadef_register_defences
    return InstalledPlugins(extra=[module])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        with Image.open(BUNDLED / f"{name}.png") as im:
            im.convert("RGB").resize((96, 96), Image.BICUBIC).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory, image_dir, registry):
    out = tmp_path_factory.mktemp("run")
    path = out / "grid.yaml"
    path.write_text(GRID.format(images=image_dir, output=out / "run", extra="protocol: quick"))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    return summary


@pytest.mark.slow
def test_protocol_ranks_flip_with_no_defence_and_flags_the_gradient_hider(protocol_run):
    summary = protocol_run
    assert summary.failed == 0
    table = pd.read_csv(summary.run_dir / "verdict.csv", keep_default_na=False, na_values=[""])
    assert {
        "metric",
        "defence",
        "threat",
        "eps",
        "gain_nonadaptive",
        "gain_adaptive",
        "gain_blackbox",
        "gain_worst",
        "flags",
    } <= set(table.columns)
    assert pd.read_parquet(summary.run_dir / "verdict.parquet").shape == table.shape
    head = table[table["budget"] == "linf=10/255"].set_index("defence")
    none = head.loc["no-defence"]
    # flip is no defence against an attacker who knows it: its worst case overlaps no-defence's interval
    flip = head.loc["flip"]
    assert (
        flip["gain_worst_ci_low"] <= none["gain_worst_ci_high"]
        and none["gain_worst_ci_low"] <= flip["gain_worst_ci_high"]
    )
    assert abs(flip["gain_worst"] - none["gain_worst"]) < 0.1
    assert "a" in flip["flags"]  # its non-adaptive figure was no robustness figure
    hider = head.loc["test-gradient-hider"]
    assert "b" in hider["flags"] and abs(hider["gain_worst"] - none["gain_worst"]) < 0.05
    assert hider["gain_adaptive"] < 0.5 * hider["gain_nonadaptive"]  # the white-box attack got no gradient
    median = head.loc["median-blur[kernel_size=5]"]
    assert "b" not in str(median["flags"]) and median["rise_adaptive"] > median["rise_nonadaptive"]
    assert "b" not in str(none["flags"]) and "b" not in str(flip["flags"])
    # the study's ranking (non-adaptive) puts flip first; the verdict does not
    ranking = summary.verdict.ranking
    assert ranking.loc[ranking["defence"] == "flip", "study_rank"].iloc[0] == 1
    assert ranking["defence"].iloc[0] != "flip"
    # the short table of the run holds the user's attacks only
    assert set(summary.table["attack"]) == {"ifgsm"}


@pytest.mark.slow
def test_protocol_report_leads_with_the_worst_case(protocol_run):
    written = write_report(protocol_run.run_dir)
    md = written["markdown"].read_text()
    findings = md.split("## Key findings", 1)[1]
    worst, study = findings.split("### The study's protocol", 1)
    first = next(line for line in worst.splitlines() if line.startswith("1. "))
    assert "flip" not in first and "L-inf budgets 4/255, 10/255" in worst
    assert study.index("flip") < study.index("median-blur")  # the study's ranking, labelled as such, beside
    assert any(k.startswith("figure:verdict_curve_") for k in written)
    html = written["html"].read_text()
    assert "id='verdict'" in html and "worst-case ranking" in html
    # the study's tables keep the run's own attacks
    summary = pd.read_csv(protocol_run.run_dir / "summary.csv")
    assert set(summary["attack"]) == {"ifgsm"}


@pytest.mark.slow
def test_without_the_key_the_run_is_unchanged(tmp_path, image_dir, registry, protocol_run):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(images=image_dir, output=tmp_path / "plain", extra=""))
    summary = run_grid(load_run_config(path, plugins=registry), plugins=registry, progress=False)
    assert summary.verdict is None and not (summary.run_dir / "verdict.csv").exists()
    assert "protocol" not in json.loads((summary.run_dir / "run.json").read_text())
    plain = pd.read_parquet(summary.run_dir / "results.parquet")
    both = pd.read_parquet(protocol_run.run_dir / "results.parquet")
    info = json.loads((protocol_run.run_dir / "run.json").read_text())
    mine = study_rows(both, info).drop(columns=[c for c in both.columns if c.startswith("redraw_")], errors="ignore")
    key = ["image", "defence"]
    a = plain.sort_values(key).reset_index(drop=True)[key + ["f_clean", "f_adv", "f_def_adv"]]
    b = mine.sort_values(key).reset_index(drop=True)[key + ["f_clean", "f_adv", "f_def_adv"]]
    pd.testing.assert_frame_equal(a, b)
