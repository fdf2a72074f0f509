"""msu-robustness in MDTVSFA's domain: the benchmark's per-metric maps, read safely and applied as it does.

The map file of MSU_Metrics_Robustness_Benchmark (robustness_benchmark/models/models_to_mdtvsfa_1d.pth) is a
plain pickle of torch MLPs and scikit-learn MinMaxScalers. A file of the same layout is written here with
made-up weights, and the values are compared with ``NOT.transform_domain`` re-done in the test.
"""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from iqadef.core.errors import ConfigError
from iqadef.plugins.scores import robustness_benchmark as rb
from iqadef.plugins.scores._domain import PiecewiseLinearMap, fit_quantile_map

INFO = {"label": "metaiqa", "name": "metaiqa", "range": (0.0, 1.0), "higher_is_better": True}


class MinMaxScaler:  # pickled under scikit-learn's module name, as the benchmark's file holds it
    def __init__(self, scale, offset):
        self.scale_, self.min_ = np.array([scale]), np.array([offset])
        self.feature_range, self.clip = (0, 1), False


@pytest.fixture
def benchmark_file(tmp_path, monkeypatch):
    """A models_to_mdtvsfa_1d.pth look-alike with one metric, 'meta-iqa' (the benchmark's spelling)."""
    module = types.ModuleType("sklearn.preprocessing._data")
    module.MinMaxScaler = MinMaxScaler
    MinMaxScaler.__module__ = module.__name__
    for name in ("sklearn", "sklearn.preprocessing"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    content = {
        "domain": "mdtvsfa",
        "models": {"meta-iqa": model},
        "scalers": {"meta-iqa": {"X": MinMaxScaler(1.25, -0.1), "Y": MinMaxScaler(0.01, 0.0)}},
    }
    path = tmp_path / "models_to_mdtvsfa_1d.pth"
    path.write_bytes(pickle.dumps(content, protocol=4))
    return path, model


def reference_transform(values, model, scale, offset, seed):
    """NOT.transform_domain: scale, repeat 512 times with N(0, 0.1^2) noise from the global RNG, mean of T."""
    x = torch.Tensor((np.asarray(values).reshape(-1, 1) * scale + offset).reshape(-1, 1))
    torch.manual_seed(seed)
    with torch.no_grad():
        x = x.reshape(-1, 1, 1).repeat(1, 512, 1)
        z = torch.randn(x.size(0), 512, 1) * 0.1
        t = model(torch.cat([x, z], dim=2).flatten(start_dim=0, end_dim=1)).reshape(-1, 512, 1)
    return t.mean(dim=1).numpy().reshape(-1)


def test_benchmark_maps_are_applied_as_the_benchmark_applies_them(benchmark_file):
    path, model = benchmark_file
    score = rb.MsuRobustness(domain="mdtvsfa", domain_maps=path, domain_seed=3)
    values = np.array([0.1, 0.35, 0.5, 0.9, 1.2])
    np.testing.assert_allclose(
        score.to_domain(values, INFO), reference_transform(values, model, 1.25, -0.1, 3), rtol=1e-6, atol=1e-7
    )


def test_scores_in_the_domain_are_the_raw_scores_of_the_mapped_values(benchmark_file):
    path, model = benchmark_file
    group = pd.DataFrame({"f_clean": [0.2, 0.4, 0.6, 0.8], "f_def_adv": [0.5, 0.45, 0.9, 0.85]})
    mapped = rb.MsuRobustness(domain="mdtvsfa", domain_maps=path).summarise(group, INFO)
    transformed = pd.DataFrame({c: reference_transform(group[c], model, 1.25, -0.1, 0) for c in group})
    raw_of_transformed = rb.MsuRobustness().summarise(transformed, INFO)
    assert set(mapped) == {f"{k}_mdtvsfa" for k in raw_of_transformed}
    for key, value in raw_of_transformed.items():
        assert mapped[f"{key}_mdtvsfa"] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert mapped["robustness_score_mdtvsfa"] != pytest.approx(
        rb.MsuRobustness().summarise(group, INFO)["robustness_score"]
    )


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")

    class Payload:
        def __reduce__(self):
            import os

            return os.remove, (str(victim),)

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"models": Payload(), "scalers": {}}, protocol=4))
    with pytest.raises(ConfigError, match="refuses to build"):
        rb.MsuRobustness(domain="mdtvsfa", domain_maps=path)
    assert victim.read_text() == "still here"


def test_json_knots_and_missing_maps(tmp_path):
    path = tmp_path / "maps.json"
    path.write_text(json.dumps({"meta-iqa": {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.8, 1.0]}}))
    score = rb.MsuRobustness(domain="mdtvsfa", domain_maps=path)
    # inside: interpolated; beyond the end knots: the end segments continued (attacks leave the range)
    np.testing.assert_allclose(score.to_domain(np.array([0.25, 0.75, 1.5, -0.5]), INFO), [0.4, 0.9, 1.2, -0.8])
    with pytest.raises(ConfigError, match="no mdtvsfa map for metric 'spaq'"):
        score.to_domain(np.array([1.0]), {**INFO, "name": "spaq", "label": "spaq"})
    with pytest.raises(ConfigError, match="domain_maps"):
        rb.MsuRobustness(domain="mdtvsfa")
    with pytest.raises(ConfigError, match="not found"):
        rb.MsuRobustness(domain="mdtvsfa", domain_maps=tmp_path / "absent.pth")
    path.write_text(json.dumps({"m": {"x": [1.0, 0.0], "y": [0.0, 1.0]}}))
    with pytest.raises(ConfigError, match="increasing"):
        rb.MsuRobustness(domain="mdtvsfa", domain_maps=path)


def test_quantile_map_is_the_monotone_transport_between_two_samples():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 1, 4000)
    target = rng.uniform(0, 1, 4000) ** 2  # the optimal 1-D map is v -> v^2
    mapping = fit_quantile_map(source, target)
    grid = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(mapping(grid), grid**2, atol=0.03)
    assert np.all(np.diff(mapping(np.linspace(-1, 2, 50))) >= 0)
    with pytest.raises(ValueError):
        PiecewiseLinearMap([0.0], [1.0])
