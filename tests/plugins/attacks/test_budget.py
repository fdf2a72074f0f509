"""Equal budgets (core/budget.py): ``{name: korhonen, budget: {linf: 8/255}}`` lands every x_a within 5% of
8/255 by searching the attack's swept parameter, and the result table says which value was chosen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iqadef import ConfigError
from iqadef.config.registry import load_run_config
from iqadef.core.budget import TOLERANCE, BudgetedAttack, achieved
from iqadef.core.plugins import InstalledPlugins
from iqadef.execute import run_grid

TARGET = 8 / 255


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins()


def test_achieved_size_is_measured_on_the_stored_8_bit_image():
    clean = torch.full((3, 4, 4), 100 / 255)
    adv = clean.clone()
    adv[0, 0, 0] += 7.6 / 255  # stored as 108/255: 8 levels
    assert achieved("linf", clean, adv) == pytest.approx(8 / 255)
    assert achieved("psnr", clean, clean) == float("inf")


@pytest.mark.parametrize("name, native", [("korhonen", "lr"), ("madc", "lr"), ("ssah", "lr"), ("ifgsm", "alpha")])
def test_budget_lands_each_image_within_5_percent_on_tiny_iqa(registry, tiny_iqa, bundled_images, name, native):
    images = (bundled_images[:2] * 255).round() / 255
    attack = BudgetedAttack(registry.get("attacks", name)(), "linf", TARGET).load("cpu")
    assert attack.param.name == native and "budget_linf=" in attack.label
    adv = attack.run(tiny_iqa, images, seed=0)
    for i in range(2):
        assert abs(achieved("linf", images[i], adv[i]) - TARGET) <= TOLERANCE * TARGET
    # the x_a is the plain attack's at the chosen value
    for i, value in enumerate(attack.chosen_values):
        plain = registry.get("attacks", name)(**{native: value}).run(tiny_iqa, images[i : i + 1], seed=i)
        assert torch.equal(plain, adv[i : i + 1])
    with torch.no_grad():
        assert (tiny_iqa.score(adv) > tiny_iqa.score(images)).all()


def test_a_psnr_budget(registry, cnn_metric, small_images):
    attack = BudgetedAttack(registry.get("attacks", "korhonen")(), "psnr", 40.0).load("cpu")
    adv = attack.run(cnn_metric, small_images[:2], seed=0)
    for i in range(2):
        assert abs(achieved("psnr", small_images[i], adv[i]) - 40.0) <= TOLERANCE * 40.0


def test_an_unreachable_budget_fails_clearly(registry, cnn_metric, small_images):
    """I-FGSM's eps (10/255) caps its L-inf: no step size reaches 20/255."""
    attack = BudgetedAttack(registry.get("attacks", "ifgsm")(), "linf", 20 / 255).load("cpu")
    with pytest.raises(RuntimeError, match="no value of alpha lands"):
        attack.run(cnn_metric, small_images[:1], seed=0)


GRID = """
dataset: {{images: {images}}}
output: {output}
batch_size: 2
seed: 3
examples: 0
metrics: [tiny-iqa]
attacks:
{attacks}
defences: {defences}
"""


def write_images(folder, n=2, size=32):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        base = np.stack([np.sin(xx / (3 + i)), np.cos(yy / (4 + i)), np.sin((xx + yy) / 6)], -1) * 0.35 + 0.5
        img = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def run(tmp_path, attacks, defences="[no-defence]"):
    path = tmp_path / "run.yaml"
    text = GRID.format(
        images=tmp_path / "images",
        output=tmp_path / "out",
        defences=defences,
        attacks="\n".join(f"  - {a}" for a in attacks),
    )
    path.write_text(text)
    summary = run_grid(load_run_config(path), progress=False)
    return pd.read_parquet(summary.run_dir / "results.parquet")


def test_registry_budget_entries_state_the_chosen_value(tmp_path):
    write_images(tmp_path / "images")
    attacks = [
        "{name: korhonen, budget: {linf: 8/255}}",
        "{name: madc, budget: {linf: 8/255}}",
        "{name: ssah, budget: {linf: 8/255}}",
        "{name: ifgsm, budget: {linf: 8/255}}",
        "ifgsm",
    ]
    df = run(tmp_path, attacks)
    assert (df["status"] == "ok").all() and len(df) == 5 * 2
    budgeted = df[df["attack"].str.contains("budget_linf")]
    assert sorted(budgeted["attack"].unique()) == [
        f"{n}[budget_linf=8/255]" for n in ("ifgsm", "korhonen", "madc", "ssah")
    ]
    assert ((budgeted["linf_x_xa"] - TARGET).abs() <= TOLERANCE * TARGET).all()
    assert budgeted["native_value"].notna().all() and (budgeted["native_value"] > 0).all()
    assert df[df["attack"] == "ifgsm"]["native_value"].isna().all()  # a plain entry: no search
    assert (budgeted["attack_params"].str.contains('"budget"')).all()

    # a defence added later reuses the cached x_a: the chosen value comes back from its PNG
    again = run(tmp_path, attacks[:1], defences="[no-defence, jpeg]")
    first = budgeted[budgeted["attack"].str.startswith("korhonen")].set_index("image")["native_value"]
    for _, row in again.iterrows():
        assert row["native_value"] == first[row["image"]]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{name: korhonen, lr: 0.01, budget: {linf: 8/255}}", "searches lr itself"),
        ("{name: korhonen, budget: {l3: 1}}", "unknown size"),
        ("{name: korhonen, budget: {linf: 2}}", "too large"),
        ("{name: korhonen, budget: 8}", "one key"),
        ("{name: pgd-linf, budget: {linf: 8/255}}", "no single swept parameter"),
    ],
)
def test_bad_budgets_are_config_errors(tmp_path, entry, message):
    (tmp_path / "images").mkdir()
    path = tmp_path / "run.yaml"
    path.write_text(
        GRID.format(
            images=tmp_path / "images", output=tmp_path / "out", defences="[no-defence]", attacks=f"  - {entry}"
        )
    )
    with pytest.raises(ConfigError, match=message):
        load_run_config(path)
