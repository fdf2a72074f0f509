"""The registry loader never raises anything but the project's own ConfigError, whatever the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iqadef import ConfigError
from iqadef.config.registry import TOP_KEYS, load_run_config, parse_run_config

names = st.sampled_from(["toy-metric", "toy-sign", "toy-blur", "no-defence", "jpeg", "ifgsm", "nope", "", "../x"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    names,
    st.just("4/255"),
    st.just("presets"),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=8),
                names,
                st.sampled_from(["name", "sweep", "params", "eps", "steps", "sigma", "compose", "adaptive"]),
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
entry = st.one_of(
    names,
    st.fixed_dictionaries(
        {"name": names},
        optional={
            "eps": scalars,
            "steps": scalars,
            "sigma": scalars,
            "sweep": values,
            "params": values,
            "adaptive": scalars,
            "eot_samples": scalars,
        },
    ),
    st.lists(names, max_size=3),
)
registries = st.fixed_dictionaries(
    {},
    optional={
        **{k: values for k in TOP_KEYS},
        "metrics": st.lists(entry, max_size=3),
        "attacks": st.lists(entry, max_size=3),
        "defences": st.lists(entry, max_size=3),
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(registries, values))
def test_structured_input_only_raises_config_error(data, toy_registry, tmp_path):
    if not isinstance(data, dict):
        data = {"metrics": data}
    try:
        parse_run_config(data, tmp_path / "registry.yaml", plugins=toy_registry)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.builds(lambda d: yaml.safe_dump(d), registries)))
def test_arbitrary_text_only_raises_config_error(text, toy_registry, tmp_path):
    path = Path(tmp_path) / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        text.encode("utf-8", errors="replace")
    )
    try:
        load_run_config(path, plugins=toy_registry)
    except ConfigError:
        pass


def test_unsafe_yaml_tags_are_refused(tmp_path, toy_registry):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"metrics: !!python/object/apply:os.system ['touch {marker}']\nattacks: [toy-sign]\n")
    try:
        load_run_config(path, plugins=toy_registry)
    except ConfigError as exc:
        assert "invalid YAML" in str(exc) and "evil.yaml" in str(exc)
    else:
        raise AssertionError("an unsafe tag was accepted")
    assert not marker.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    eps=st.lists(st.integers(1, 50), min_size=1, max_size=4, unique=True),
    steps=st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True),
    sigmas=st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True),
    extra_defences=st.integers(0, 2),
)
def test_max_cells_counts_exactly_what_the_sweeps_expand_to(eps, steps, sigmas, extra_defences, toy_registry, tmp_path):
    """The grid is counted without expanding it; the count must be the number of cells it expands to."""
    data = {
        "metrics": ["toy-metric"],
        "attacks": [{"name": "toy-sign", "sweep": {"eps": [f"{e}/255" for e in eps], "steps": steps}}],
        "defences": [{"name": "toy-noise-defence", "sweep": {"sigma": [s / 100 for s in sigmas]}}]
        + ["no-defence", "toy-blur"][:extra_defences],
    }
    cells = len(eps) * len(steps) * (len(sigmas) + extra_defences)
    config = parse_run_config({**data, "max_cells": cells}, tmp_path / "registry.yaml", plugins=toy_registry)
    assert len(config.metrics) * len(config.attacks) * len(config.defences) == cells
    if cells > 1:
        with pytest.raises(ConfigError, match=f"the grid has {cells:,} metric x attack x defence combinations"):
            parse_run_config({**data, "max_cells": cells - 1}, tmp_path / "registry.yaml", plugins=toy_registry)
