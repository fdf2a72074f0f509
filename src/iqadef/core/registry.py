"""The registry file (``registry.yaml``): what to run. Schema in docs/registry.md.

Everything is validated before any work starts; errors name the file, the key path
(``defences[2].sweep.quality``) and what is allowed. YAML is read with ``yaml.safe_load`` only, so
tags that would build Python objects are refused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .base import Attack, Defence, Metric, Plugin
from .compose import Compose
from .dataset import DEFAULT_MAX_SIDE, builtin_images_dir
from .errors import ConfigError
from .plugins import PluginRegistry, get_registry
from .suggest import did_you_mean

TOP_KEYS = {
    "dataset": "images folder (or `builtin`) and optional MOS CSV",
    "output": "run directory",
    "device": "auto | cpu | cuda | cuda:N",
    "batch_size": "images per batch",
    "seed": "integer seed of the run",
    "examples": "how many images per cell keep an example of D(x_a) for the report",
    "metrics": "list of metric entries",
    "attacks": "list of attack entries",
    "defences": "list of defence entries",
    "executor": "local | ray",
    "ray": "Ray options (address, num_cpus, num_gpus)",
}
DATASET_KEYS = {"images", "mos", "max_side"}
#: Keys of an entry that are not plugin parameters.
ENTRY_KEYS = {"name", "params", "sweep"}
ATTACK_ENTRY_KEYS = ENTRY_KEYS | {"adaptive", "eot_samples"}
ADAPTIVE_MODES = ("none", "bpda", "eot", "bpda+eot")


@dataclass
class AttackEntry:
    """An attack as configured: the plugin plus how it treats the defence (issue: adaptive attacks)."""

    attack: Attack
    adaptive: str = "none"
    eot_samples: int = 1

    @property
    def label(self) -> str:
        if self.adaptive == "none":
            return self.attack.label
        extra = f",eot={self.eot_samples}" if "eot" in self.adaptive else ""
        return f"{self.attack.label}@{self.adaptive}{extra}"

    def key(self) -> str:
        if self.adaptive == "none":
            return self.attack.key()
        return f"{self.attack.key()}-{self.adaptive}-{self.eot_samples}"


@dataclass
class RunConfig:
    source: Path
    images: Path
    mos: Path | None
    max_side: int
    output: Path
    device: str
    batch_size: int
    seed: int
    examples: int
    metrics: list[Metric]
    attacks: list[AttackEntry]
    defences: list[Defence]
    executor: str = "local"
    ray: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def plugins(self) -> list[Plugin]:
        """Every plugin instance of the grid, the stages of composed defences included."""
        def expand(plugin: Plugin) -> list[Plugin]:
            stages = getattr(plugin, "stages", None)
            return [p for s in stages for p in expand(s)] if stages else [plugin]

        return ([*self.metrics] + [e.attack for e in self.attacks]
                + [p for d in self.defences for p in expand(d)])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for but CUDA is not available here; use `auto` or `cpu`")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device: {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such registry file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the registry YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not a UTF-8 text file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None


def load_run_config(path: str | Path, *, registry: PluginRegistry | None = None,
                    overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a registry file. ``overrides`` (from the CLI) replace top-level keys."""
    path = Path(path)
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys ({', '.join(TOP_KEYS)})")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return parse_run_config(data, path, registry=registry)


def _int(data: dict, key: str, default: int, where: str, low: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}{key}: {value!r} must be an integer >= {low}")
    return value


def parse_run_config(data: dict[str, Any], source: Path, *, registry: PluginRegistry | None = None) -> RunConfig:
    registry = registry or get_registry()
    where = f"{source}: "
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}unknown key {key!r}{did_you_mean(str(key), TOP_KEYS)}; "
                              f"allowed: {', '.join(TOP_KEYS)}")
    base = source.parent

    dataset = data.get("dataset", {"images": "builtin"})
    if isinstance(dataset, str):
        dataset = {"images": dataset}
    if not isinstance(dataset, dict):
        raise ConfigError(f"{where}dataset: must be a mapping with `images` (a folder or `builtin`) and optional `mos`")
    for key in dataset:
        if key not in DATASET_KEYS:
            raise ConfigError(f"{where}dataset.{key}: unknown key{did_you_mean(str(key), DATASET_KEYS)}; "
                              f"allowed: {', '.join(sorted(DATASET_KEYS))}")
    images_value = dataset.get("images", "builtin")
    if not isinstance(images_value, str) or not images_value:
        raise ConfigError(f"{where}dataset.images: must be a folder path or `builtin`")
    images = builtin_images_dir() if images_value == "builtin" else (base / images_value).expanduser()
    if not images.is_dir():
        raise ConfigError(f"{where}dataset.images: {images} is not a folder")
    mos_value = dataset.get("mos")
    if mos_value is not None and not isinstance(mos_value, str):
        raise ConfigError(f"{where}dataset.mos: must be a CSV file path or null")
    mos = (base / mos_value).expanduser() if mos_value else None
    if mos is not None and not mos.is_file():
        raise ConfigError(f"{where}dataset.mos: {mos} does not exist")
    max_side = _int(dataset, "max_side", DEFAULT_MAX_SIDE, where + "dataset.", low=16)

    output_value = data.get("output", "runs/default")
    if not isinstance(output_value, str) or not output_value.strip():
        raise ConfigError(f"{where}output: must be a folder path")
    output = base / Path(output_value).expanduser()  # `~/runs` is in the home folder, not `<base>/~/runs`
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{where}output: {output} exists and is not a folder; choose another `output`")

    device = data.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError(f"{where}device: must be auto, cpu, cuda or cuda:N")
    if device != "auto":
        try:
            resolve_device(device)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None

    executor = data.get("executor", "local")
    if executor not in ("local", "ray"):
        raise ConfigError(f"{where}executor: {executor!r} must be `local` or `ray`")
    ray = data.get("ray") or {}
    if not isinstance(ray, dict):
        raise ConfigError(f"{where}ray: must be a mapping (address, num_cpus, num_gpus)")
    from .executors.ray_executor import RayOptions  # here: avoids an import cycle; does not import Ray

    RayOptions.parse(ray, f"{where}ray")

    metrics = [m for i, e in enumerate(_section(data, "metrics", where, required=True))
               for m in _entries(registry, "metrics", e, f"{where}metrics[{i}]")]
    attacks = [a for i, e in enumerate(_section(data, "attacks", where, required=True))
               for a in _attack_entries(registry, e, f"{where}attacks[{i}]")]
    defence_list = _section(data, "defences", where, required=False) or ["no-defence"]
    defences = [d for i, e in enumerate(defence_list)
                for d in _defence_entries(registry, e, f"{where}defences[{i}]")]
    _no_duplicates(metrics, where + "metrics")
    _no_duplicates(attacks, where + "attacks")
    _no_duplicates(defences, where + "defences")

    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}seed: {seed!r} must be an integer")
    return RunConfig(
        source=source, images=images, mos=mos, max_side=max_side, output=output, device=device,
        batch_size=_int(data, "batch_size", 4, where, low=1), seed=seed,
        examples=_int(data, "examples", 2, where), metrics=metrics, attacks=attacks, defences=defences,
        executor=executor, ray=ray, raw=data,
    )


def _section(data: dict, key: str, where: str, required: bool) -> list:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}{key}: missing; give a list of {key} (`iqadef list {key}` shows them)")
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or (required and not value):
        raise ConfigError(f"{where}{key}: must be a non-empty list of names or {{name: ..., param: value}} entries")
    return value


def _no_duplicates(items: list, where: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        label = item.label
        if label in seen:
            raise ConfigError(f"{where}: {label!r} is listed twice (entries {seen[label]} and {i} after sweeps); "
                              f"remove one")
        seen[label] = i


def _param_sets(registry: PluginRegistry, kind: str, entry: Any, where: str,
                extra_keys: set[str] = ENTRY_KEYS) -> tuple[type, list[tuple[dict, str]]]:
    """Expand one entry into (class, [(params, where)]) — a sweep or a params list gives several."""
    if isinstance(entry, str):
        return registry.get(kind, entry, where), [({}, where)]
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a name or a mapping with `name`, got {type(entry).__name__}")
    if "name" not in entry:
        raise ConfigError(f"{where}: missing `name`")
    name = entry["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: must be a string")
    cls = registry.get(kind, name, f"{where}.name")
    inline = {k: v for k, v in entry.items() if k not in extra_keys}
    declared = {p.name: p for p in cls.params}
    sets: list[tuple[dict, str]]
    if "params" in entry:
        listed = entry["params"]
        if isinstance(listed, dict):
            listed = [listed]
        if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
            raise ConfigError(f"{where}.params: must be a mapping or a list of mappings of parameter values")
        sets = [({**inline, **p}, f"{where}.params[{j}]") for j, p in enumerate(listed)]
    else:
        sets = [(inline, where)]
    sweep = entry.get("sweep")
    if sweep is not None:
        if not isinstance(sweep, dict) or not sweep:
            raise ConfigError(f"{where}.sweep: must map parameter names to lists of values (or `presets`)")
        axes = []
        for key, values in sweep.items():
            if key not in declared:
                raise ConfigError(f"{where}.sweep.{key}: unknown parameter{did_you_mean(str(key), declared)}; "
                                  f"allowed: {', '.join(declared) or '(none)'}")
            if values == "presets":
                values = list(declared[key].presets)
                if not values:
                    raise ConfigError(f"{where}.sweep.{key}: {name!r} has no presets for {key!r}; list the values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.sweep.{key}: must be a non-empty list of values or `presets`")
            axes.append([(key, v) for v in values])
        sets = [({**params, **dict(combo)}, w) for params, w in sets for combo in itertools.product(*axes)]
    return cls, sets


def _entries(registry: PluginRegistry, kind: str, entry: Any, where: str) -> list:
    cls, sets = _param_sets(registry, kind, entry, where)
    return [cls(where=w, **params) for params, w in sets]


def _attack_entries(registry: PluginRegistry, entry: Any, where: str) -> list[AttackEntry]:
    cls, sets = _param_sets(registry, "attacks", entry, where, ATTACK_ENTRY_KEYS)
    adaptive, eot = "none", 1
    if isinstance(entry, dict):
        adaptive = entry.get("adaptive", "none") or "none"
        if adaptive not in ADAPTIVE_MODES:
            raise ConfigError(f"{where}.adaptive: {adaptive!r} must be one of {', '.join(ADAPTIVE_MODES)}")
        eot = entry.get("eot_samples", 8 if "eot" in adaptive else 1)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ConfigError(f"{where}.eot_samples: {eot!r} must be an integer >= 1")
    return [AttackEntry(cls(where=w, **params), adaptive, eot) for params, w in sets]


def _defence_entries(registry: PluginRegistry, entry: Any, where: str) -> list[Defence]:
    if isinstance(entry, dict) and "compose" in entry:
        extra = set(entry) - {"compose"}
        if extra:
            raise ConfigError(f"{where}: a `compose` entry takes no other keys (found {', '.join(sorted(extra))})")
        entry = entry["compose"]
    if isinstance(entry, list):
        if len(entry) < 2:
            raise ConfigError(f"{where}: a composition needs at least two defences, e.g. [diffpure, unsharp]")
        stages = []
        for j, sub in enumerate(entry):
            found = _entries(registry, "defences", sub, f"{where}[{j}]")
            if len(found) != 1:
                raise ConfigError(f"{where}[{j}]: sweeps are not allowed inside a composition")
            stages.append(found[0])
        return [Compose(stages)]
    return _entries(registry, "defences", entry, where)
