"""The Python API: plugins by name with parameters, and a grid from a dict returning its table."""

from __future__ import annotations

import pytest
import torch
from toy_plugins import SMALL_GRID

import iqadef
from iqadef import ConfigError, load_attack, load_defence, load_metric
from iqadef.core.dataset import Dataset, builtin_images_dir


def test_an_attack_from_load_attack_raises_the_score_of_a_metric_from_load_metric():
    metric = load_metric("tiny-iqa", device="cpu")
    attack = load_attack("ifgsm", eps="4/255", iters=3, alpha="1/255", device="cpu")
    assert attack.eps == pytest.approx(4 / 255) and metric.device == torch.device("cpu")
    dataset = Dataset(builtin_images_dir(), None, max_side=256, limit=2)
    x = dataset.load(dataset.items[:2])
    with torch.no_grad():
        before = metric(x)
    x_adv = attack.run(metric, x, seed=0)
    with torch.no_grad():
        after = metric(x_adv)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 4 / 255 + 1e-6
    assert (after > before).all(), (before, after)


def test_presets_defences_and_composition():
    from iqadef.plugins.attacks.ifgsm import ALPHA_PRESETS

    assert load_attack("ifgsm", preset={"alpha": 9}).alpha == ALPHA_PRESETS[9]
    jpeg = load_defence("jpeg", quality=30, device="cpu")
    x = torch.rand(1, 3, 32, 32)
    assert jpeg.purify(x).shape == x.shape
    both = load_defence(["jpeg", "flip"], device="cpu")
    assert both.label == "jpeg+flip" and both.purify(x).shape == x.shape


def test_mistakes_are_config_errors_naming_the_plugin():
    with pytest.raises(ConfigError, match=r"unknown metric 'tiny-iq' \(did you mean 'tiny-iqa'\?\)"):
        load_metric("tiny-iq")
    with pytest.raises(ConfigError, match=r"attack 'ifgsm'.eps: 2 is too large"):
        load_attack("ifgsm", eps=2)
    with pytest.raises(ConfigError, match=r"no presets for 'eps'"):
        load_attack("ifgsm", preset={"eps": 0})
    with pytest.raises(ConfigError, match=r"index from 0 to 9"):
        load_attack("ifgsm", preset={"alpha": 10})


def test_run_grid_from_a_dict_returns_the_table_and_resumes(tmp_path, image_dir, toy_registry, capsys):
    import yaml

    config = yaml.safe_load(SMALL_GRID.format(images=image_dir, output="ignored"))
    df = iqadef.run_grid(config, out=tmp_path / "run", device="cpu", plugins=toy_registry)
    assert len(df) == 12 and (df["status"] == "ok").all()
    assert set(df["defence"]) == {"no-defence", "toy-blur"} and {"f_clean", "f_def_adv", "psnr_x_xa"} <= set(df.columns)
    assert "12 to do; device cpu" in capsys.readouterr().out
    again = iqadef.run_grid(config, out=tmp_path / "run", plugins=toy_registry)
    assert "0 to do, 12 already done" in capsys.readouterr().out
    assert again[["f_clean", "f_def_adv"]].equals(df[["f_clean", "f_def_adv"]])
