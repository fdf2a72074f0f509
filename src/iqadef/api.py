"""The Python API, for notebooks and scripts (docs/python.md): load a metric, an attack or a defence by name
with parameters, ready to call; run a grid from a dict or a registry file and get its table back.

Everything goes through the same registry validation as ``iqadef run`` (parameter types and ranges,
``"10/255"`` fractions, unknown names with a did-you-mean, weight files resolved and downloaded unless
``IQADEF_OFFLINE=1``), so a notebook and a registry file mean the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .core.base import Attack, Defence, Metric, Plugin
from .core.compose import Compose
from .core.errors import ConfigError
from .core.plugins import PluginRegistry, get_registry
from .core.registry import _make, load_run_config, parse_run_config, resolve_device
from .core.weights import fetch_missing

__all__ = ["load_attack", "load_defence", "load_metric", "run_grid"]


def _load(kind: str, name: str, device: str | torch.device, registry: PluginRegistry | None,
          preset: Mapping[str, int] | None, params: dict[str, Any]) -> Plugin:
    registry = registry or get_registry()
    where = f"{kind[:-1]} {name!r}"
    cls = registry.get(kind, name, where)
    declared = {p.name: p for p in cls.params}
    values = dict(params)
    for key, index in (preset or {}).items():
        if key not in declared or not declared[key].presets:
            has = [p.name for p in cls.params if p.presets]
            raise ConfigError(f"{where}: preset={{{key!r}: ...}}: {name!r} has no presets for {key!r}; "
                              f"parameters with presets: {', '.join(has) or '(none)'}")
        presets = declared[key].presets
        if isinstance(index, bool) or not isinstance(index, int) or not -len(presets) <= index < len(presets):
            raise ConfigError(f"{where}: preset={{{key!r}: {index!r}}}: give an index from 0 to {len(presets) - 1} "
                              f"into {key!r}'s presets {list(presets)}")
        if key in values:
            raise ConfigError(f"{where}: {key!r} is given both as a value and as a preset; give one")
        values[key] = presets[index]
    plugin = _make(cls, values, where)
    fetch_missing([plugin])  # a missing weight file: one clear WeightsError saying where to put it
    return plugin.load(_device(device))


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(str(device))


def load_metric(name: str, *, device: str | torch.device = "auto", registry: PluginRegistry | None = None,
                preset: Mapping[str, int] | None = None, **params: Any) -> Metric:
    """A metric by name, its parameters as keywords, loaded on ``device``: ``metric(images) -> [B]`` scores.

    ``preset={"param": i}`` takes the ``i``-th of that parameter's presets (``iqadef list metrics``)."""
    return _load("metrics", name, device, registry, preset, params)  # type: ignore[return-value]


def load_attack(name: str, *, device: str | torch.device = "auto", registry: PluginRegistry | None = None,
                preset: Mapping[str, int] | None = None, **params: Any) -> Attack:
    """An attack by name: ``attack.run(metric, images, seed=0) -> adversarial images``.

    ``load_attack("ifgsm", eps="4/255")`` or ``load_attack("ifgsm", preset={"alpha": 3})``."""
    return _load("attacks", name, device, registry, preset, params)  # type: ignore[return-value]


def load_defence(name: str | Sequence[str], *, device: str | torch.device = "auto",
                 registry: PluginRegistry | None = None, preset: Mapping[str, int] | None = None,
                 **params: Any) -> Defence:
    """A defence by name: ``defence.purify(images, seed=0) -> purified images``.

    A list of names (``["jpeg", "unsharp"]``) composes them, as in a registry; parameters then go to
    ``load_defence`` of each stage, so give the stages as names only."""
    if isinstance(name, str):
        return _load("defences", name, device, registry, preset, params)  # type: ignore[return-value]
    if params or preset:
        raise ConfigError("load_defence([...]): a composition takes no parameters; load each stage with "
                          "load_defence(name, **params) and compose them with iqadef.core.compose.Compose")
    stages = [_load("defences", n, device, registry, None, {}) for n in name]
    if len(stages) < 2:
        raise ConfigError("load_defence([...]): a composition needs at least two defences")
    return Compose(stages).load(_device(device))


def run_grid(config: Mapping[str, Any] | str | Path, *, out: str | Path | None = None,
             device: str | None = None, limit: int | None = None, fresh: bool = False,
             progress: bool | None = False, registry: PluginRegistry | None = None,
             verbose: bool = True) -> pd.DataFrame:
    """Run (or resume) a grid and return its table (``results.parquet`` as a DataFrame, one row per cell).

    ``config`` is a registry file or the same content as a dict; relative paths in a dict are relative
    to the current folder. ``out`` overrides ``output`` (the run folder, also written: store, results.*,
    no report); ``device`` overrides ``device``. Killed and started again, it resumes like ``iqadef run``.
    ``verbose`` prints the opening line (grid size, cells to do, device)."""
    from .core.run import run_grid as _run_grid

    registry = registry or get_registry()
    overrides = {"device": device}
    if isinstance(config, (str, Path)):
        run_config = load_run_config(config, registry=registry, overrides=overrides)
    elif isinstance(config, Mapping):
        data = {**dict(config), **{k: v for k, v in overrides.items() if v is not None}}
        run_config = parse_run_config(data, Path.cwd() / "<dict>", registry=registry)
    else:
        raise ConfigError(f"run_grid: config must be a dict or a registry file path, not {type(config).__name__}")
    if out is not None:
        run_config.output = Path(out).expanduser().resolve()
    summary = _run_grid(run_config, fresh=fresh, limit=limit, progress=progress, registry=registry,
                        announce=print if verbose else None)
    return pd.read_parquet(summary.files["results.parquet"])
