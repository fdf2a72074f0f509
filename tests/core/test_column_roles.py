"""A score column's ``role`` is one of :data:`iqadef.core.columns.ROLES`, recorded in run.json and read back;
an unknown role or two columns with the same role in a run are one clear line."""

from __future__ import annotations

import pytest

from iqadef import ConfigError, ImageScore, ScoreColumn
from iqadef.analysis.scores import recorded_columns
from iqadef.core import columns


def _plugin(name: str, *declared: ScoreColumn) -> type:
    return type(name.title().replace("-", ""), (ImageScore,), {"name": name, "columns": declared})


def test_an_unknown_role_is_one_clear_error():
    with pytest.raises(
        ConfigError,
        match=r"^score column 'vis': role 'visibility' is not allowed; expected None or one of "
        r"'attack_psnr', .*'paper_gain'$",
    ):
        ScoreColumn("vis", "higher", role="visibility")
    info = {"score_columns": {"vis": {"name": "vis", "role": "visibility"}}}
    with pytest.raises(ConfigError, match=r"^run.json: score_columns.vis: score column 'vis': role 'visibility'"):
        columns.read(info)


def test_two_columns_with_the_same_role_are_one_clear_error():
    first = _plugin("first-ssim", ScoreColumn("ssim_a", "higher", role="attack_ssim"))
    second = _plugin("second-ssim", ScoreColumn("ssim_b", "higher", role="attack_ssim"))
    with pytest.raises(ConfigError) as caught:
        columns.record([first, second])
    message = str(caught.value)
    assert "\n" not in message
    assert "'first-ssim' (ssim_a)" in message and "'second-ssim' (ssim_b)" in message and "'attack_ssim'" in message
    both = _plugin("both", ScoreColumn("a", role="attack_linf"), ScoreColumn("b", role="attack_linf"))
    with pytest.raises(ConfigError, match="'both' \\(a\\) and 'both' \\(b\\) both declare role 'attack_linf'"):
        columns.record([both])


def test_the_role_goes_through_run_json():
    recorded = columns.record([_plugin("mine", ScoreColumn("vis", "higher", role="attack_ssim"))])
    assert recorded["vis"]["role"] == "attack_ssim"
    read = columns.read({"score_columns": recorded})
    assert columns.column_with_role(read, "attack_ssim") == "vis"
    assert columns.column_with_role(read, "attack_psnr") is None


def test_the_builtins_declare_the_roles_old_runs_read():
    recorded = columns.read({"score_columns": recorded_columns()})
    legacy = columns.read({})
    for role in columns.ROLES:
        assert columns.column_with_role(recorded, role) == columns.column_with_role(legacy, role) is not None


def test_a_run_recorded_before_roles_reads_the_builtins_roles():
    """run.json written when score columns were recorded but had no ``role`` (the built-ins' entries, role
    key absent): the report still finds the full-reference and gain columns by role."""
    recorded = {name: {k: v for k, v in entry.items() if k != "role"} for name, entry in recorded_columns().items()}
    read = columns.read({"score_columns": recorded})
    legacy = columns.read({})
    for role in columns.ROLES:
        assert columns.column_with_role(read, role) == columns.column_with_role(legacy, role) is not None
    # a column of a third-party plugin recorded without a role keeps none
    recorded["vis"] = {"name": "vis", "direction": "higher"}
    assert columns.read({"score_columns": recorded})["vis"].role is None
