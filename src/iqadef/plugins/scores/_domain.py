"""Per-metric maps of raw scores into one common domain (MDTVSFA), as the MSU robustness benchmark does.

Reference: msu-video-group/MSU_Metrics_Robustness_Benchmark, ``robustness_benchmark/interface.py``
(``domain_transform``, off by default in ``run_full_pipeline``) and ``robustness_benchmark/NOT.py``. The
benchmark fits, per metric, a 1-D Neural Optimal Transport map T(x, z) from that metric's score
distribution to MDTVSFA's (an MLP 2 -> 100 -> 100 -> 100 -> 1 with ReLUs), stored with scikit-learn
``MinMaxScaler``s in ``robustness_benchmark/models/models_to_mdtvsfa_1d.pth`` (a plain pickle, not a torch
checkpoint). A value v maps to ``mean_z T(X(v), z)`` over 512 draws of ``z ~ N(0, 0.1^2)``, where X is the
metric's input scaler; the result is left in the scaled MDTVSFA domain (the Y scaler is only used in training).

Two sources of maps:

* that file, read by :func:`load_domain_maps` with an allow-list unpickler (only the tensors, arrays,
  ``OrderedDict`` and stand-ins for the four classes it holds can be built; nothing runs), and evaluated
  with the reference's noise draw, from a seeded generator instead of the global RNG;
* a JSON file of knots ``{"<metric>": {"x": [...], "y": [...]}}`` (a monotone piecewise-linear map, linear
  beyond the end knots), e.g. from :func:`fit_quantile_map`: in one dimension the optimal transport map for a
  convex cost is the monotone rearrangement F_target^-1(F_source(v)), which the NOT map approximates; it
  needs both metrics' scores on a common set of images.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from iqadef import ConfigError

if TYPE_CHECKING:
    import torch

#: Noise of the reference's stochastic map (NOT.py: ``Z_STD``, ``Z_SIZE``).
Z_STD = 0.1
Z_SIZE = 512


def metric_key(name: str) -> str:
    """Names compared without case and punctuation: iqadef's ``metaiqa`` is the benchmark's ``meta-iqa``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


class PiecewiseLinearMap:
    """Monotone map through knots ``(x, y)``; continued linearly beyond the end knots (attacks leave the range)."""

    def __init__(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or x.size < 2 or not np.all(np.diff(x) > 0):
            raise ValueError("knots need at least two strictly increasing x values and as many y values")
        self.x, self.y = x, y

    def __call__(self, values) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        out = np.interp(v, self.x, self.y)
        low_slope = (self.y[1] - self.y[0]) / (self.x[1] - self.x[0])
        high_slope = (self.y[-1] - self.y[-2]) / (self.x[-1] - self.x[-2])
        out = np.where(v < self.x[0], self.y[0] + (v - self.x[0]) * low_slope, out)
        return np.where(v > self.x[-1], self.y[-1] + (v - self.x[-1]) * high_slope, out)

    def to_json(self) -> dict[str, list[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}


def fit_quantile_map(source, target, knots: int = 101) -> PiecewiseLinearMap:
    """The 1-D optimal transport map from ``source`` scores to ``target`` scores: matched quantiles.

    ``source``: one metric's scores on a set of images; ``target``: MDTVSFA's (or any common metric's) scores
    on a set from the same distribution. Ties in the source quantiles are merged.
    """
    source = np.asarray(source, dtype=float)
    target = np.asarray(target, dtype=float)
    source, target = source[np.isfinite(source)], target[np.isfinite(target)]
    if source.size < 2 or target.size < 2:
        raise ValueError("fitting a quantile map needs at least two finite values on each side")
    levels = np.linspace(0.0, 1.0, knots)
    x, y = np.quantile(source, levels), np.quantile(target, levels)
    keep = np.concatenate([[True], np.diff(x) > 0])
    return PiecewiseLinearMap(x[keep], y[keep])


class NeuralOTMap:
    """The benchmark's map for one metric: input min-max scaling, then the mean of T([x, z]) over noise z."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], scale: float, offset: float, seed: int = 0):
        self.layers = layers
        self.scale, self.offset = scale, offset
        self.seed = seed

    def __call__(self, values) -> np.ndarray:
        import torch  # here: the report reads the summary scores without torch unless a benchmark map is used

        v = np.asarray(values, dtype=float).reshape(-1)
        x = torch.tensor(v * self.scale + self.offset, dtype=torch.float32)  # MinMaxScaler.transform
        generator = torch.Generator().manual_seed(self.seed)
        z = torch.randn(x.numel(), Z_SIZE, 1, generator=generator) * Z_STD
        h = torch.cat([x.reshape(-1, 1, 1).expand(-1, Z_SIZE, 1), z], dim=2).flatten(0, 1)
        with torch.no_grad():
            for i, (weight, bias) in enumerate(self.layers):
                h = h @ weight.T + bias
                if i < len(self.layers) - 1:
                    h = torch.relu(h)
        return h.reshape(-1, Z_SIZE).mean(dim=1).double().numpy()


# -- reading the benchmark's pickle without running it -----------------------------------------------
class _Recorded:
    """Stand-in for a pickled class: keeps the state the pickle gives it, and nothing else."""

    state: dict = {}

    def __setstate__(self, state):
        self.state = state


_STAND_INS = {
    ("torch.nn.modules.container", "Sequential"): "Sequential",
    ("torch.nn.modules.linear", "Linear"): "Linear",
    ("torch.nn.modules.activation", "ReLU"): "ReLU",
    ("sklearn.preprocessing._data", "MinMaxScaler"): "MinMaxScaler",
}


def _storage_from_bytes(data: bytes):
    """What ``torch.storage._load_from_bytes`` does, with ``weights_only`` and on the CPU."""
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _allowed() -> dict[tuple[str, str], Callable]:
    import torch

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array rebuilder, whatever its module
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    return allowed


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file, label: str):
        super().__init__(file)
        self.label = label
        self.allowed = _allowed()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if (module, name) in _STAND_INS:
            return type(_STAND_INS[(module, name)], (_Recorded,), {})
        raise ConfigError(
            f"{self.label}: refuses to build {module}.{name}; only the benchmark's "
            f"models_to_mdtvsfa_1d.pth layout (torch Linear/ReLU, MinMaxScaler) can be read"
        )


def _mlp_layers(model, label: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    modules = getattr(model, "state", {}).get("_modules", {})
    layers, kinds = [], []
    for child in modules.values():
        kind = type(child).__name__
        kinds.append(kind)
        if kind == "Linear":
            params = child.state.get("_parameters", {})
            layers.append((params["weight"].detach().float(), params["bias"].detach().float()))
    expected = ["Linear", "ReLU"] * (len(layers) - 1) + ["Linear"]
    if not layers or kinds != expected or layers[0][0].shape[1] != 2 or layers[-1][0].shape[0] != 1:
        raise ConfigError(f"{label}: expected an MLP Linear(2, .) -> ReLU -> ... -> Linear(., 1), found {kinds}")
    return layers


def _read_benchmark_pickle(path: Path, seed: int) -> dict[str, NeuralOTMap]:
    label = str(path)
    try:
        with path.open("rb") as handle:
            content = _AllowListUnpickler(handle, label).load()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage is the file's, say so in one line
        raise ConfigError(
            f"{label}: not a readable domain-map file ({type(exc).__name__}: {exc}); give the "
            f"benchmark's models_to_mdtvsfa_1d.pth or a JSON of knots"
        ) from None
    if not isinstance(content, dict) or not {"models", "scalers"} <= set(content):
        raise ConfigError(f"{label}: expected a dict with 'models' and 'scalers' (models_to_mdtvsfa_1d.pth)")
    maps = {}
    for name, model in content["models"].items():
        scaler = content["scalers"].get(name, {}).get("X")
        state = getattr(scaler, "state", {})
        if "scale_" not in state or "min_" not in state:
            raise ConfigError(f"{label}: metric {name!r} has no input scaler (scalers[{name!r}]['X'])")
        maps[metric_key(name)] = NeuralOTMap(
            _mlp_layers(model, f"{label}: {name}"),
            float(np.asarray(state["scale_"]).reshape(-1)[0]),
            float(np.asarray(state["min_"]).reshape(-1)[0]),
            seed,
        )
    return maps


def _read_knots(path: Path, text: str) -> dict[str, PiecewiseLinearMap]:
    try:
        content = json.loads(text)
        return {metric_key(name): PiecewiseLinearMap(entry["x"], entry["y"]) for name, entry in content.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f'{path}: expected JSON {{"<metric>": {{"x": [...], "y": [...]}}}} with strictly '
            f"increasing x ({type(exc).__name__}: {exc})"
        ) from None


def load_domain_maps(path: str | Path, seed: int = 0) -> dict[str, Callable]:
    """Per-metric maps (keyed by :func:`metric_key`) from the benchmark's pickle or a JSON file of knots."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{path}: domain-map file not found; download robustness_benchmark/models/"
            f"models_to_mdtvsfa_1d.pth from msu-video-group/MSU_Metrics_Robustness_Benchmark"
        )
    head = path.read_bytes()[:1]
    if head == b"\x80":  # a pickle's protocol marker
        return _read_benchmark_pickle(path, seed)
    return _read_knots(path, path.read_text(encoding="utf-8", errors="replace"))
