"""The registry key ``protocol``: absent changes nothing; quick/standard add the ensemble's attack entries,
labelled by role and budget; a wrong value is one clear error."""

from __future__ import annotations

import pytest

from iqadef.analysis.protocol import LEVEL_SETTINGS, ROLE_ATTACKS, STUDY_EPS, format_eps, protocol_attacks
from iqadef.config.registry import load_run_config
from iqadef.core.errors import ConfigError
from iqadef.core.plugins import InstalledPlugins
from iqadef.plan.grid import run_info

BASE = """
dataset: {{images: builtin}}
metrics: [tiny-iqa]
attacks: [ifgsm, fgsm]
defences: [no-defence, flip]
{extra}
"""


@pytest.fixture(scope="module")
def registry():
    return InstalledPlugins()


def _config(tmp_path, registry, extra=""):
    path = tmp_path / "r.yaml"
    path.write_text(BASE.format(extra=extra))
    return load_run_config(path, plugins=registry)


def test_without_the_key_nothing_changes(tmp_path, registry):
    config = _config(tmp_path, registry)
    assert config.protocol is None
    assert [e.label for e in config.attacks] == ["ifgsm", "fgsm"]
    assert "protocol" not in run_info(config, config.open_dataset(limit=1))


def test_quick_adds_the_ensemble_labelled_by_role_and_budget(tmp_path, registry):
    config = _config(tmp_path, registry, "protocol: quick")
    labels = [e.label for e in config.attacks]
    # the user's `ifgsm` is the study's attack at 10/255: it plays that role instead of a second copy
    assert labels[:2] == ["ifgsm", "fgsm"] and "nonadaptive@linf=10/255" not in labels
    assert config.protocol["cells"]["ifgsm"]["role"] == "nonadaptive"
    expected = {p.label for p in protocol_attacks("quick")} - {"nonadaptive@linf=10/255"}
    assert set(labels[2:]) == expected
    sanity = next(e for e in config.attacks if e.label.startswith("sanity@"))
    assert sanity.adaptive == "bpda+eot" and sanity.attack.config["eps"] == 1.0
    adaptive = next(e for e in config.attacks if e.label == "adaptive@linf=4/255")
    assert adaptive.attack.name == ROLE_ATTACKS[("adaptive", "linf")].attack
    assert adaptive.eot_samples == LEVEL_SETTINGS["quick"].eot
    info = run_info(config, config.open_dataset(limit=1))
    assert info["protocol"]["level"] == "quick" and "L-inf budgets 4/255, 10/255" in info["protocol"]["threat_model"]
    assert info["protocol"]["study"] == ["ifgsm", "fgsm"]
    assert len({e.key() for e in config.attacks}) == len(config.attacks)


def test_standard_has_the_four_budgets_the_studys_and_one_l2(tmp_path, registry):
    config = _config(tmp_path, registry, "protocol: standard")
    budgets = {
        (c["threat"], format_eps(c["threat"], c["eps"]))
        for c in config.protocol["cells"].values()
        if c["role"] != "sanity"
    }
    assert {b for t, b in budgets if t == "linf"} == {"2/255", "4/255", "8/255", "10/255", "16/255"}
    assert len({b for t, b in budgets if t == "l2"}) == 1
    assert STUDY_EPS in LEVEL_SETTINGS["standard"].linf


def test_a_wrong_level_is_one_clear_error(tmp_path, registry):
    with pytest.raises(ConfigError, match=r"protocol: 'full' must be one of quick, standard"):
        _config(tmp_path, registry, "protocol: full")


def test_format_eps():
    assert format_eps("linf", 8 / 255) == "8/255"
    assert format_eps("linf", 0.01) == "0.01"
    assert format_eps("l2", 3.0) == "3"


def test_the_cli_flag_overrides_the_registry(tmp_path, registry):
    path = tmp_path / "r.yaml"
    path.write_text(BASE.format(extra=""))
    config = load_run_config(path, plugins=registry, overrides={"protocol": "quick"})
    assert config.protocol["level"] == "quick" and config.raw["protocol"] == "quick"  # run.json's registry too
    assert load_run_config(path, plugins=registry, overrides={"protocol": None}).protocol is None
