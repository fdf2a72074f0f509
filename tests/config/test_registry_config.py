from __future__ import annotations

import re
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

from iqadef import ConfigError
from iqadef.config.registry import load_run_config
from iqadef.core.compose import Compose


def load(tmp_path: Path, text: str, registry):
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return load_run_config(path, plugins=registry)


def test_full_registry_with_sweeps_presets_and_composition(tmp_path, image_dir, toy_registry):
    cfg = load(
        tmp_path,
        f"""
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
""",
        toy_registry,
    )
    # fractions of 255 as written; a sweep names its default too (labels only: keys come from identity())
    assert [a.label for a in cfg.attacks] == ["toy-sign", "toy-sign[eps=2/255]", "toy-sign[eps=8/255,steps=3]"]
    assert [d.label for d in cfg.defences][:4] == [
        "no-defence",
        "toy-noise-defence[sigma=0.01]",
        "toy-noise-defence[sigma=0.02]",
        "toy-noise-defence[sigma=0.05]",
    ]
    composed = cfg.defences[-1]
    assert isinstance(composed, Compose) and composed.label == "toy-blur+toy-noise-defence"
    assert composed.randomized and composed.differentiable
    assert cfg.output == tmp_path / "out" and cfg.seed == 7 and cfg.batch_size == 2


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "metrics: [toy-metrc]\nattacks: [toy-sign]",
            "metrics[0]: unknown metric 'toy-metrc' (did you mean 'toy-metric'?)",
        ),
        (
            "metrics: [toy-metric]\nattacks: [toy-sign]\nbatchsize: 3",
            "unknown key 'batchsize' (did you mean 'batch_size'?)",
        ),
        ("metrics: [toy-metric]\nattacks: [{name: toy-sign, eps: -1}]", "attacks[0].eps: -1 is too small"),
        (
            "metrics: [toy-metric]\nattacks: [{name: toy-sign, sweep: {epz: [1]}}]",
            "attacks[0].sweep.epz: unknown parameter",
        ),
        ("metrics: [toy-metric]\nattacks: [toy-sign, toy-sign]", "'toy-sign' is listed twice"),
        ("metrics: [toy-metric]", "attacks: missing"),
        ("metrics: [toy-metric]\nattacks: [toy-sign]\nbatch_size: 0", "batch_size: 0 must be an integer >= 1"),
        (
            "metrics: [toy-metric]\nattacks: [toy-sign]\nseed: !!python/object/apply:os.system ['echo hi']",
            "invalid YAML",
        ),
        (
            "metrics: [toy-metric]\nattacks: [{name: toy-sign, adaptive: magic}]",
            "attacks[0].adaptive: 'magic' must be one of",
        ),
        ("metrics: [toy-metric]\nattacks: [toy-sign]\ndefences: [[toy-blur]]", "a composition needs at least two"),
        ("- just\n- a list", "the top level must be a mapping"),
        ("metrics: [toy-metric]\nattacks: [toy-sign]\ndevice: tpu", "device: 'tpu' is not a device"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path, image_dir, toy_registry, text, fragment):
    text = f"dataset: {{images: {image_dir}}}\n{text}" if not text.startswith("-") else text
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, toy_registry)
    assert fragment in str(info.value)
    assert "registry.yaml" in str(info.value)


def test_output_that_is_a_file_is_refused(tmp_path, image_dir, toy_registry):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="output: .* exists and is not a folder"):
        load(
            tmp_path,
            f"dataset: {{images: {image_dir}}}\noutput: out\nmetrics: [toy-metric]\nattacks: [toy-sign]",
            toy_registry,
        )


def test_missing_registry_file(tmp_path, toy_registry):
    with pytest.raises(ConfigError, match="no such registry file"):
        load_run_config(tmp_path / "nope.yaml", plugins=toy_registry)


@pytest.mark.parametrize("name", ["registry.yaml", "registry-paper.yaml"])
def test_shipped_registries_validate(name):
    root = REPO_ROOT
    cfg = load_run_config(root / name, overrides={"dataset": {"images": "builtin"}})
    assert cfg.metrics and cfg.attacks and cfg.defences


# -- YAML: duplicate keys, YAML 1.2 numbers, aliases -----------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "metrics: [toy-metric]\nattacks: [toy-sign]\nmetrics: [toy-nan]\n",
            "line 4, column 1: invalid YAML: key 'metrics' appears twice (first at line 2); keep one of them",
        ),
        (
            "metrics: [toy-metric]\nattacks:\n  - name: toy-sign\n    eps: 0.01\n    eps: 0.02\n",
            "line 6, column 5: invalid YAML: key 'eps' appears twice (first at line 5)",
        ),
    ],
)
def test_duplicate_keys_are_refused_with_their_line(tmp_path, image_dir, toy_registry, text, fragment):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"dataset: {{images: {image_dir}}}\n{text}", toy_registry)
    assert fragment in str(info.value) and "registry.yaml" in str(info.value)


def test_merge_keys_may_be_overridden(tmp_path, image_dir, toy_registry):
    """`<<: *base` then an explicit key is YAML's override, not a duplicate."""
    cfg = load(
        tmp_path,
        f"""
dataset: {{images: {image_dir}}}
metrics: [toy-metric]
attacks: [&base {{name: toy-sign, eps: 0.01}}, {{<<: *base, eps: 0.02}}]
""",
        toy_registry,
    )
    assert [a.attack.eps for a in cfg.attacks] == [0.01, 0.02]


def test_exponent_without_a_dot_is_a_number(tmp_path, image_dir, toy_registry):
    """`eps: 1e9` (YAML 1.1 would give the string '1e9') and `1.0e-2` (no sign: also a string there)."""
    cfg = load(
        tmp_path,
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\n"
        f"attacks: [{{name: toy-noise, eps: 1e9}}, {{name: toy-sign, eps: 1.0e-2}}]",
        toy_registry,
    )
    assert cfg.attacks[0].attack.eps == 1e9 and cfg.attacks[1].attack.eps == 0.01


def test_aliases_that_expand_to_a_huge_document_are_refused(tmp_path, image_dir, toy_registry):
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="aliases .* expand to more than 1,000,000 values"):
        load(tmp_path, "\n".join(lines) + "\n", toy_registry)


# -- grid size: counted before it is expanded ------------------------------------------------------------


def test_a_grid_above_max_cells_is_refused_naming_the_entry(tmp_path, image_dir, toy_registry):
    cfg = f"""
dataset: {{images: {image_dir}}}
max_cells: 20
metrics: [toy-metric]
attacks: [toy-sign, {{name: toy-sign, sweep: {{eps: [0.01, 0.02, 0.03], steps: [1, 2, 3, 4, 5, 6, 7]}}}}]
defences: [no-defence, toy-blur]
"""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, cfg, toy_registry)
    message = str(info.value)
    assert "the grid has 44 metric x attack x defence combinations per image (1 x 22 x 2)" in message
    assert "more than max_cells: 20" in message
    assert "the largest entry, attacks[1] (toy-sign), expands to 21 (eps: 3 values x steps: 7 values)" in message
    assert load(tmp_path, cfg.replace("max_cells: 20", "max_cells: 44"), toy_registry).attacks[-1].label


def test_a_sweep_of_two_hundred_million_is_refused_before_it_is_expanded(tmp_path, image_dir, toy_registry):
    """The default limit; the check counts (len x len ...) and builds nothing, so it is instant."""
    values = "[" + ", ".join(str(i) for i in range(1, 201)) + "]"
    eps = "[" + ", ".join(f"{i}/10000" for i in range(1, 1001)) + "]"
    text = (
        f"dataset: {{images: {image_dir}}}\nmetrics: [toy-metric]\n"
        f"attacks: [{{name: toy-sign, sweep: {{eps: {eps}, steps: {values}}}}}]\n"
        f"defences: [{{name: toy-noise-defence, sweep: {{sigma: [{', '.join(f'0.0{i}' for i in range(1, 10))}]}}}}]\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"1,800,000 metric x attack x defence combinations .* more than max_cells: "
        r"100,000; the largest entry, attacks\[0\] \(toy-sign\), expands to 200,000",
    ):
        load(tmp_path, text, toy_registry)


def test_max_cells_must_be_a_positive_integer(tmp_path, image_dir, toy_registry):
    with pytest.raises(ConfigError, match="max_cells: 0 must be an integer >= 1"):
        load(
            tmp_path,
            f"dataset: {{images: {image_dir}}}\nmax_cells: 0\nmetrics: [toy-metric]\nattacks: [toy-sign]",
            toy_registry,
        )


# -- device and weight files: checked before any work -----------------------------------------------------


@pytest.mark.parametrize(
    "device, fragment",
    [
        ("meta", "is not a device iqadef can run on; use auto, cpu, cuda, cuda:N or mps"),
        ("xla", "is not a device iqadef can run on"),
        ("cuda:-1", "is not a device iqadef can run on"),
        ("mps:0", "is not a device iqadef can run on"),
        ("CPU", "is not a device iqadef can run on"),
        ("cpu:1", "there is one CPU device; use `cpu`"),
    ],
)
def test_devices_a_run_cannot_use_are_refused(tmp_path, image_dir, toy_registry, device, fragment):
    with pytest.raises(ConfigError, match=f"registry.yaml: device: '{device}'(: | ){re.escape(fragment)}"):
        load(
            tmp_path,
            f"dataset: {{images: {image_dir}}}\ndevice: '{device}'\nmetrics: [toy-metric]\nattacks: [toy-sign]",
            toy_registry,
        )


def test_a_cuda_device_this_machine_lacks_is_refused(tmp_path, image_dir, toy_registry):
    import torch

    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    expected = "CUDA device(s)" if torch.cuda.is_available() else "CUDA is not available here"
    with pytest.raises(ConfigError, match=expected):
        load(
            tmp_path,
            f"dataset: {{images: {image_dir}}}\ndevice: '{device}'\nmetrics: [toy-metric]\nattacks: [toy-sign]",
            toy_registry,
        )


@pytest.mark.parametrize(
    "entry, key",
    [
        ("{name: tiny-iqa, weights_path: missing.pt}", "metrics[0].weights_path"),  # a packaged-file plugin
        ("{name: linearity, params: [{}, {weights_path: missing.pt}]}", "metrics[0].params[1].weights_path"),  # a spec
    ],
)
def test_a_missing_weights_path_is_refused_at_config_time(tmp_path, image_dir, entry, key):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"dataset: {{images: {image_dir}}}\nmetrics: [{entry}]\nattacks: [ifgsm]", None)
    message = str(info.value)
    assert f"registry.yaml: {key}: " in message and "missing.pt does not exist" in message


def test_a_folder_given_as_weights_path_is_refused(tmp_path, image_dir):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ConfigError, match=r"metrics\[0\].weights_path: .*weights is not a file"):
        load(
            tmp_path,
            f"dataset: {{images: {image_dir}}}\nmetrics: [{{name: tiny-iqa, weights_path: "
            f"{tmp_path / 'weights'}}}]\nattacks: [ifgsm]",
            None,
        )


def test_max_cells_may_be_written_with_an_exponent(tmp_path, image_dir, toy_registry):
    text = (
        f"dataset: {{images: {image_dir}}}\nmax_cells: 1e1\nmetrics: [toy-metric]\n"
        f"attacks: [{{name: toy-sign, params: [{{eps: 0.01}}, {{eps: 0.02}}], sweep: {{steps: [1, 2, 3, 4, 5, 6]}}}}]"
    )
    with pytest.raises(
        ConfigError, match=r"more than max_cells: 10; .* expands to 12 \(params: 2 sets x steps: 6 values\)"
    ):
        load(tmp_path, text, toy_registry)
