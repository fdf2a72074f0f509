"""The registry loader never raises anything but the project's own ConfigError, whatever the input."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iqadef import ConfigError
from iqadef.core.registry import TOP_KEYS, load_run_config, parse_run_config

names = st.sampled_from(["toy-metric", "toy-sign", "toy-blur", "no-defence", "jpeg", "ifgsm", "nope", "", "../x"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), names, st.just("4/255"), st.just("presets"))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=8), names,
                                                                                 st.sampled_from(["name", "sweep", "params", "eps", "steps", "sigma", "compose", "adaptive"])),
                                                                       inner, max_size=4)), max_leaves=12)
entry = st.one_of(names, st.fixed_dictionaries({"name": names}, optional={
    "eps": scalars, "steps": scalars, "sigma": scalars, "sweep": values, "params": values, "adaptive": scalars,
    "eot_samples": scalars}), st.lists(names, max_size=3))
registries = st.fixed_dictionaries({}, optional={
    **{k: values for k in TOP_KEYS},
    "metrics": st.lists(entry, max_size=3),
    "attacks": st.lists(entry, max_size=3),
    "defences": st.lists(entry, max_size=3),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.one_of(registries, values))
def test_structured_input_only_raises_config_error(data, toy_registry, tmp_path):
    if not isinstance(data, dict):
        data = {"metrics": data}
    try:
        parse_run_config(data, tmp_path / "registry.yaml", registry=toy_registry)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.builds(lambda d: yaml.safe_dump(d), registries)))
def test_arbitrary_text_only_raises_config_error(text, toy_registry, tmp_path):
    path = Path(tmp_path) / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        text.encode("utf-8", errors="replace"))
    try:
        load_run_config(path, registry=toy_registry)
    except ConfigError:
        pass


def test_unsafe_yaml_tags_are_refused(tmp_path, toy_registry):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"metrics: !!python/object/apply:os.system ['touch {marker}']\nattacks: [toy-sign]\n")
    try:
        load_run_config(path, registry=toy_registry)
    except ConfigError as exc:
        assert "invalid YAML" in str(exc) and "evil.yaml" in str(exc)
    else:
        raise AssertionError("an unsafe tag was accepted")
    assert not marker.exists()
