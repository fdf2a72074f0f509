"""All the mistakes of a registry are reported at once: one line each, naming the file and key, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from iqadef.config.registry import ConfigErrors, load_run_config

THREE_MISTAKES = """
dataset: {images: builtin}
batch_sise: 4
metrics: [tiny-iqa]
attacks:
  - {name: ifgsm, eps: 2}
defences: [no-defence, jpegg]
"""


def test_three_mistakes_in_one_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(THREE_MISTAKES)
    with pytest.raises(ConfigErrors) as info:
        load_run_config(path)
    lines = [str(e) for e in info.value.errors]
    assert len(lines) == 3, lines
    for start in (
        f"{path}: unknown key 'batch_sise' (did you mean 'batch_size'?)",
        f"{path}: attacks[0].eps: 2 is too large",
        f"{path}: defences[1]: unknown defence 'jpegg' (did you mean 'jpeg'",
    ):
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)


def test_mistakes_in_several_sets_of_one_sweep_and_sections(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("""
seed: one
metrics: [{name: tiny-iqa, params: [{}, {nope: 1}]}]
attacks: [ifgsm, {name: fgsm, sweep: {eps: [0.1, 3, 4]}}]
unit_timeout: -1
""")
    with pytest.raises(ConfigErrors) as info:
        load_run_config(path)
    text = str(info.value)
    assert "metrics[0].params[1].nope: unknown parameter" in text
    assert "attacks[1].eps: 3 is too large" in text and "attacks[1].eps: 4 is too large" in text
    assert "seed: 'one' must be an integer" in text and "unit_timeout: -1" in text
    assert len(info.value.errors) == 5


def test_one_mistake_stays_a_plain_config_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("metrics: [tiny-iqa]\nattacks: [ifgsm]\nseed: x\n")
    with pytest.raises(Exception) as info:
        load_run_config(path)
    assert not isinstance(info.value, ConfigErrors) and "seed: 'x' must be an integer" in str(info.value)


def test_cli_prints_each_mistake_on_its_own_line_and_exits_2(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(THREE_MISTAKES)
    out = subprocess.run(
        [sys.executable, "-m", "iqadef", "run", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and all(str(path) in line for line in errors), out.stderr
    assert not (tmp_path / "runs").exists()  # nothing was run


def test_an_unknown_executor_on_the_command_line_is_one_line_naming_the_known_ones(tmp_path):
    """`--executor` is checked where the registry's `executor:` is (the names of execute/executors.py)."""
    registry = tmp_path / "r.yaml"
    registry.write_text(
        f"dataset: {{name: builtin}}\noutput: {tmp_path / 'out'}\nmetrics: [tiny-iqa]\n"
        "attacks: [fgsm]\ndefences: [no-defence]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "iqadef", "run", str(registry), "--executor", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {registry}: executor: 'nope' must be `local` or `ray`"]
    assert not (tmp_path / "out").exists()
