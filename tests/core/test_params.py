from __future__ import annotations

import pytest

from iqadef import ConfigError, Param
from iqadef.core.params import resolve

PARAMS = (
    Param("quality", int, 50, low=1, high=100, presets=(10, 30, 50)),
    Param("eps", float, 10 / 255, low=0, high=1),
    Param("mode", str, "reflect", choices=("reflect", "zeros")),
    Param("flag", bool, False),
    Param("weights_path", str, None),
)


def test_defaults_fill_in():
    assert resolve(PARAMS, {}, "x") == {
        "quality": 50,
        "eps": 10 / 255,
        "mode": "reflect",
        "flag": False,
        "weights_path": None,
    }


def test_fraction_strings_and_int_to_float():
    out = resolve(PARAMS, {"eps": "4/255", "quality": 30.0}, "x")
    assert out["eps"] == pytest.approx(4 / 255)
    assert out["quality"] == 30 and isinstance(out["quality"], int)
    assert resolve(PARAMS, {"eps": 1}, "x")["eps"] == 1.0


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"quality": 0}, "defences[1].quality: 0 is too small; expected int in [1, 100]"),
        ({"quality": "high"}, "defences[1].quality: 'high' (str) is not a valid int"),
        ({"quality": True}, "is not a valid int"),
        ({"eps": "1/0"}, "is not a valid float"),
        ({"mode": "wrap"}, "one of 'reflect', 'zeros'"),
        ({"flag": "yes"}, "is not a valid bool"),
        ({"qualty": 5}, "defences[1].qualty: unknown parameter (did you mean 'quality'?)"),
        ({"quality": None}, "null is not allowed"),
    ],
)
def test_bad_values_name_the_key(given, fragment):
    with pytest.raises(ConfigError) as info:
        resolve(PARAMS, given, "defences[1]")
    assert fragment in str(info.value)


def test_nullable_when_default_is_none():
    assert resolve(PARAMS, {"weights_path": None}, "x")["weights_path"] is None


@pytest.mark.parametrize("text, value", [("1e-1", 0.1), ("5E-1", 0.5), (" .25 ", 0.25), ("+1", 1.0), ("2e-1/2", 0.1)])
def test_float_params_accept_numbers_written_as_strings(text, value):
    """YAML 1.1 reads `1e-1` (an exponent without a dot) as a string; it is still the number 0.1."""
    assert resolve(PARAMS, {"eps": text}, "x")["eps"] == pytest.approx(value)


@pytest.mark.parametrize("text", ["inf", "nan", "1e999", "0x10", "1,5", "ten", "1e"])
def test_float_params_refuse_strings_that_are_not_finite_decimals(text):
    with pytest.raises(ConfigError, match="is not a valid float"):
        resolve(PARAMS, {"eps": text}, "x")
