from __future__ import annotations

from pathlib import Path

import pytest

from iqadef import ConfigError
from iqadef.core.compose import Compose
from iqadef.core.registry import load_run_config


def load(tmp_path: Path, text: str, registry):
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return load_run_config(path, registry=registry)


def test_full_registry_with_sweeps_presets_and_composition(tmp_path, image_dir, toy_registry):
    cfg = load(tmp_path, f"""
dataset: {{images: {image_dir}}}
output: out
batch_size: 2
seed: 7
metrics: [toy-metric]
attacks:
  - toy-sign
  - name: toy-sign
    params: [{{eps: 2/255}}, {{eps: 8/255, steps: 3}}]
defences:
  - no-defence
  - name: toy-noise-defence
    sweep: {{sigma: presets}}
  - [toy-blur, toy-noise-defence]
""", toy_registry)
    assert [a.label for a in cfg.attacks] == ["toy-sign", "toy-sign[eps=0.00784314]", "toy-sign[eps=0.0313725,steps=3]"]
    assert [d.label for d in cfg.defences][:4] == ["no-defence", "toy-noise-defence[sigma=0.01]", "toy-noise-defence",
                                                 "toy-noise-defence[sigma=0.05]"]
    composed = cfg.defences[-1]
    assert isinstance(composed, Compose) and composed.label == "toy-blur+toy-noise-defence"
    assert composed.randomized and composed.differentiable
    assert cfg.output == tmp_path / "out" and cfg.seed == 7 and cfg.batch_size == 2


@pytest.mark.parametrize("text, fragment", [
    ("metrics: [toy-metrc]\nattacks: [toy-sign]", "metrics[0]: unknown metric 'toy-metrc' (did you mean 'toy-metric'?)"),
    ("metrics: [toy-metric]\nattacks: [toy-sign]\nbatchsize: 3", "unknown key 'batchsize' (did you mean 'batch_size'?)"),
    ("metrics: [toy-metric]\nattacks: [{name: toy-sign, eps: -1}]", "attacks[0].eps: -1 is too small"),
    ("metrics: [toy-metric]\nattacks: [{name: toy-sign, sweep: {epz: [1]}}]", "attacks[0].sweep.epz: unknown parameter"),
    ("metrics: [toy-metric]\nattacks: [toy-sign, toy-sign]", "'toy-sign' is listed twice"),
    ("metrics: [toy-metric]", "attacks: missing"),
    ("metrics: [toy-metric]\nattacks: [toy-sign]\nbatch_size: 0", "batch_size: 0 must be an integer >= 1"),
    ("metrics: [toy-metric]\nattacks: [toy-sign]\nseed: !!python/object/apply:os.system ['echo hi']", "invalid YAML"),
    ("metrics: [toy-metric]\nattacks: [{name: toy-sign, adaptive: magic}]", "attacks[0].adaptive: 'magic' must be one of"),
    ("metrics: [toy-metric]\nattacks: [toy-sign]\ndefences: [[toy-blur]]", "a composition needs at least two"),
    ("- just\n- a list", "the top level must be a mapping"),
    ("metrics: [toy-metric]\nattacks: [toy-sign]\ndevice: tpu", "device: 'tpu' is not a device"),
])
def test_mistakes_name_file_and_key(tmp_path, image_dir, toy_registry, text, fragment):
    text = f"dataset: {{images: {image_dir}}}\n{text}" if not text.startswith("-") else text
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, toy_registry)
    assert fragment in str(info.value)
    assert "registry.yaml" in str(info.value)


def test_output_that_is_a_file_is_refused(tmp_path, image_dir, toy_registry):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="output: .* exists and is not a folder"):
        load(tmp_path, f"dataset: {{images: {image_dir}}}\noutput: out\nmetrics: [toy-metric]\nattacks: [toy-sign]",
             toy_registry)


def test_missing_registry_file(tmp_path, toy_registry):
    with pytest.raises(ConfigError, match="no such registry file"):
        load_run_config(tmp_path / "nope.yaml", registry=toy_registry)


@pytest.mark.parametrize("name", ["registry.yaml", "registry-paper.yaml"])
def test_shipped_registries_validate(name):
    root = Path(__file__).resolve().parents[2]
    cfg = load_run_config(root / name, overrides={"dataset": {"images": "builtin"}})
    assert cfg.metrics and cfg.attacks and cfg.defences
