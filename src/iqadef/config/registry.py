"""The registry file (``registry.yaml``): what to run. Schema in docs/registry.md.

Everything is validated before any work starts; errors name the file, the key path
(``defences[2].sweep.quality``) and what is allowed. YAML is read with a ``yaml.SafeLoader`` subclass
only, so tags that would build Python objects are refused; it also refuses duplicate keys (PyYAML
keeps the last one silently), reads ``1e9`` as a number (YAML 1.2; YAML 1.1 makes it a string) and
refuses aliases that expand to a huge document. A sweep's size is counted before it is expanded
(``max_cells``), so a few lines cannot exhaust memory.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from iqadef.analysis.protocol import LEVELS as PROTOCOL_LEVELS
from iqadef.analysis.protocol import ProtocolAttack, protocol_attacks
from iqadef.analysis.protocol import describe as describe_protocol
from iqadef.core.base import Attack, Defence, Metric, Plugin
from iqadef.core.budget import BudgetedAttack, parse_budget, strength_param
from iqadef.core.compose import Compose
from iqadef.core.dataset import DEFAULT_MAX_SIDE, Dataset, DatasetConfig, builtin_images_dir, parse_dataset
from iqadef.core.devices import DEVICE_FORMS as DEVICE_FORMS
from iqadef.core.devices import resolve_device
from iqadef.core.errors import ConfigError
from iqadef.core.numerics import KEYS as NUMERICS_KEYS
from iqadef.core.numerics import Numerics, assign_numerics, parse_numerics
from iqadef.core.params import canonical_params
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.core.suggest import did_you_mean
from iqadef.core.weights import explicit_weight_files

#: The executors' names: the keys of execute/executors.py's table (a test keeps the two equal); here so that
#: reading a registry file (and the command line) needs no runner.
EXECUTOR_NAMES = ("local", "ray")

TOP_KEYS = {
    "dataset": "a dataset (`{name: koniq10k, split: test, sample: 200}`, docs/datasets.md) or an images folder and "
    "MOS CSV",
    "output": "run directory",
    "device": "auto | cpu | cuda | cuda:N",
    "batch_size": "images per batch",
    "seed": "integer seed of the run",
    "examples": "how many images per cell keep an example of D(x_a) for the report",
    "metrics": "list of metric entries",
    "attacks": "list of attack entries",
    "defences": "list of defence entries",
    "certified": "list of certified defences (smoothings of the metric, docs/certified.md)",
    "executor": "local | ray",
    "ray": "Ray options (address, num_cpus, num_gpus)",
    "max_cells": "most metric x attack x defence combinations (cells per image) the grid may have",
    "unit_timeout": "seconds one work unit (metric x attack x batch) may take; null: no limit",
    "metric_batch": "most images per metric call, several defences' batches together (GPU speed); null: one "
    "defence's batch per call",
    "protocol": "quick | standard: add the robustness protocol's attacks and write verdict.csv (docs/evaluation.md)",
}
TOP_KEYS.update(NUMERICS_KEYS)  # precision, compile, channels_last (core/numerics.py)
DATASET_KEYS = {"images", "mos", "max_side"}
#: Keys of an entry that are not plugin parameters.
ENTRY_KEYS = {"name", "params", "sweep"}
ATTACK_ENTRY_KEYS = ENTRY_KEYS | {"adaptive", "eot_samples", "budget"}
ADAPTIVE_MODES = ("none", "bpda", "eot", "bpda+eot")
#: Default of ``max_cells``: 70x the paper grid (3 x 10 x 47 = 1410 per image), far below what
#: expanding it costs (about 2 KB per plugin configuration).
DEFAULT_MAX_CELLS = 100_000
#: Default of ``metric_batch``: None, one defence's batch per metric call, bit-identical to scoring each
#: defence alone (a CPU gains nothing from larger calls, and float results depend on the batch size in
#: the last bits: benchmarks/metric_batch.py).
DEFAULT_METRIC_BATCH: int | None = None
#: Default of ``unit_timeout`` (s): generous, for a unit of the paper grid's slowest plugins on a CPU.
DEFAULT_UNIT_TIMEOUT = 3600.0
#: Most values a registry document may hold once its YAML aliases are expanded.
MAX_YAML_VALUES = 1_000_000


@dataclass
class AttackEntry:
    """An attack as configured: the plugin plus how it treats the defence."""

    attack: Attack
    adaptive: str = "none"
    eot_samples: int = 1
    #: the robustness protocol's role and budget of an entry it added (analysis/protocol.py), else None
    protocol: ProtocolAttack | None = None

    @property
    def label(self) -> str:
        if self.protocol is not None:
            return self.protocol.label
        if self.adaptive == "none":
            return self.attack.label
        extra = f",eot={self.eot_samples}" if "eot" in self.adaptive else ""
        return f"{self.attack.label}@{self.adaptive}{extra}"

    def key(self) -> str:
        if self.adaptive == "none":
            return self.attack.key()
        return f"{self.attack.key()}-{self.adaptive}-{self.eot_samples}"


#: Keys of the registry's ``ray:`` mapping.
RAY_KEYS = {
    "address": "cluster to join (`auto` = the one started with `ray start`); absent: start Ray on this machine",
    "local_cpus": "CPUs of a Ray instance started on this machine (default: all)",
    "num_cpus": "CPUs reserved by each metric's actor (default 1; fractions allowed)",
    "num_gpus": "GPUs reserved by each metric's actor (fractions allowed; default 1 when device is cuda, else 0)",
    "max_restarts": "times a dead actor process is restarted (default 3)",
    "max_task_retries": "times a unit is re-run after its actor died (default 3)",
    "in_flight": "units queued ahead on each actor (default 2)",
    "actors_per_metric": "actors sharing one metric's units, each with the weights loaded (default 1)",
    "torch_threads": "torch CPU threads in each actor (default: the driver's, so floats match the local run)",
}


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    local_cpus: int | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    max_restarts: int = 3
    max_task_retries: int = 3
    in_flight: int = 2
    actors_per_metric: int = 1
    torch_threads: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any] | None, where: str = "ray") -> "RayOptions":
        """Validate the ``ray:`` mapping; errors name the key and what is allowed."""
        data = dict(data or {})
        for key in data:
            if key not in RAY_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown key{did_you_mean(str(key), RAY_KEYS)}; allowed: {', '.join(RAY_KEYS)}"
                )
        address = data.get("address")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"{where}.address: must be `auto`, host:port or ray://host:port")

        def number(key: str, default: Any, integer: bool, low: float, allow_none: bool = False) -> Any:
            value = data.get(key, default)
            if value is None and allow_none:
                return None
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or value < low:
                kind = "an integer" if integer else "a number"
                raise ConfigError(f"{where}.{key}: {value!r} must be {kind} >= {low:g} ({RAY_KEYS[key]})")
            return value

        return cls(
            address=address.strip() if address else None,
            local_cpus=number("local_cpus", None, True, 1, allow_none=True),
            num_cpus=float(number("num_cpus", 1, False, 0)),
            num_gpus=number("num_gpus", None, False, 0, allow_none=True),
            max_restarts=number("max_restarts", 3, True, 0),
            max_task_retries=number("max_task_retries", 3, True, 0),
            in_flight=number("in_flight", 2, True, 1),
            actors_per_metric=number("actors_per_metric", 1, True, 1),
            torch_threads=number("torch_threads", None, True, 1, allow_none=True),
        )

    def gpus_per_actor(self, device: str) -> float:
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if device.startswith("cuda") else 0.0


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
    unit_timeout: float | None = DEFAULT_UNIT_TIMEOUT
    #: the validated ``dataset:`` (core/dataset.py); None in configs built by hand from images/mos
    dataset: DatasetConfig | None = None
    #: certified defences (``iqadef.MetricSmoothing``): cells beside the defences' (docs/certified.md)
    certified: list = field(default_factory=list)
    #: ``precision``/``compile``/``channels_last`` of the metrics' and neural defences' networks
    numerics: Numerics = field(default_factory=Numerics)
    #: most images per metric call when the worker scores a unit's defences together (same results)
    metric_batch: int | None = DEFAULT_METRIC_BATCH
    #: ``protocol:`` as run.json records it (analysis/protocol.py ``describe``); None without the key
    protocol: dict | None = None

    def open_dataset(self, limit: int | None = None) -> Dataset:
        """The run's images (a dataset plugin's split and sample, or the ``images`` folder and ``mos``)."""
        if self.dataset is not None:
            return self.dataset.open(limit=limit)
        return Dataset(self.images, self.mos, max_side=self.max_side, limit=limit)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def plugins(self) -> list[Plugin]:
        """Every plugin instance of the grid, the stages of composed defences included."""

        def expand(plugin: Plugin) -> list[Plugin]:
            stages = getattr(plugin, "stages", None)
            return [p for s in stages for p in expand(s)] if stages else [plugin]

        return (
            [*self.metrics]
            + [e.attack for e in self.attacks]
            + [p for d in self.defences for p in expand(d)]
            + [*self.certified]
        )


class _RegistryLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads YAML 1.2 floats (``1e9``) as numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` then explicit keys: an override, not a duplicate
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error names it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (first at line {first.line + 1}); keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 needs a dot and a signed exponent (`1.0e+9`); YAML 1.2 and every other parser read `1e9`,
# `1E-3`, `1.0e9` as floats. Added to a copy of the resolvers so SafeLoader itself is untouched.
_RegistryLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RegistryLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _RecursiveAlias(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int | None]) -> int:
    """How many values ``node`` becomes once aliases are expanded (a "billion laughs" is tiny as text).

    An alias inside its own anchor (``a: &a [1, *a]``) would build a list that contains itself."""
    if id(node) in memo:
        if memo[id(node)] is None:
            raise _RecursiveAlias(node.start_mark)
        return memo[id(node)]  # type: ignore[return-value]
    memo[id(node)] = None
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_VALUES + 1)
    return memo[id(node)]


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such registry file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the registry YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not a UTF-8 text file") from None
    loader = None
    try:
        loader = _RegistryLoader(text)  # its reader refuses control characters here already
        node = loader.get_single_node()
        try:
            too_big = node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES
        except _RecursiveAlias as exc:
            mark = exc.args[0]
            raise ConfigError(
                f"{path}: line {mark.line + 1}: a YAML alias (*name) is used inside its own anchor "
                f"(&name), which makes a value contain itself; write the value out"
            ) from None
        if too_big:
            raise ConfigError(
                f"{path}: its YAML aliases (*name) expand to more than {MAX_YAML_VALUES:,} values; "
                f"write the values out instead of nesting aliases"
            )
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to read (lists or mappings inside each other hundreds of levels deep)"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


@renamed_registry_keyword
def load_run_config(
    path: str | Path, *, plugins: InstalledPlugins | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
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
    return parse_run_config(data, path, plugins=plugins)


def _int(data: dict, key: str, default: int, where: str, low: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}{key}: {value!r} must be an integer >= {low}")
    return value


class ConfigErrors(ConfigError):
    """Every mistake found in a registry file, one a line (``errors``), so one run of ``iqadef run`` shows
    them all instead of one per attempt."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class _Collect:
    """Collects the ConfigErrors of independent checks (``with errors.check(): ...``), each message once."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as exc:
            self._add(*exc.errors)
        except ConfigError as exc:
            self._add(exc)

    def _add(self, *errors: ConfigError) -> None:
        seen = {str(e) for e in self.errors}
        for error in errors:
            if str(error) not in seen:
                self.errors.append(error)
                seen.add(str(error))

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


@renamed_registry_keyword
def parse_run_config(data: dict[str, Any], source: Path, *, plugins: InstalledPlugins | None = None) -> RunConfig:
    """Validate ``data`` (a registry document); every mistake is reported at once (:class:`ConfigErrors`
    when there are several): the checks that do not depend on each other all run before raising."""
    plugins = plugins or installed_plugins()
    where = f"{source}: "
    errors = _Collect()
    for key in data:
        if key not in TOP_KEYS:
            with errors.check():
                raise ConfigError(
                    f"{where}unknown key {key!r}{did_you_mean(str(key), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}"
                )
    base = source.parent

    images: Path = builtin_images_dir()
    mos: Path | None = None
    max_side = DEFAULT_MAX_SIDE
    dataset_config: DatasetConfig | None = None
    with errors.check():
        dataset_config = parse_dataset(data.get("dataset"), base, plugins, f"{where}dataset")
        images, mos, max_side = dataset_config.images, dataset_config.mos, dataset_config.max_side

    output = base / "runs/default"
    with errors.check():
        output_value = data.get("output", "runs/default")
        if not isinstance(output_value, str) or not output_value.strip():
            raise ConfigError(f"{where}output: must be a folder path")
        output = base / Path(output_value).expanduser()  # `~/runs` is in the home folder, not `<base>/~/runs`
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{where}output: {output} exists and is not a folder; choose another `output`")

    device = data.get("device", "auto")
    with errors.check():
        if not isinstance(device, str):
            raise ConfigError(f"{where}device: must be auto, cpu, cuda or cuda:N")
        if device != "auto":
            try:
                resolve_device(device)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None

    executor = data.get("executor", "local")
    with errors.check():
        if executor not in EXECUTOR_NAMES:
            names = " or ".join(f"`{n}`" for n in EXECUTOR_NAMES)
            raise ConfigError(f"{where}executor: {executor!r} must be {names}")
    ray = data.get("ray") or {}
    with errors.check():
        if not isinstance(ray, dict):
            raise ConfigError(f"{where}ray: must be a mapping (address, num_cpus, num_gpus)")
        RayOptions.parse(ray, f"{where}ray")

    # Count first, build after: a sweep of a few lines can stand for 10^8 configurations.
    planners = {
        "metrics": lambda e, w: _plan_entry(plugins, "metrics", e, w),
        "attacks": lambda e, w: _plan_attack(plugins, e, w),
        "defences": lambda e, w: _plan_defence(plugins, e, w),
        "certified": lambda e, w: _plan_entry(plugins, "certified", e, w),
    }
    plans: dict[str, list[_Plan]] = {}
    complete = True
    for kind, planner in planners.items():
        entries: list = []
        with errors.check():
            entries = _section(data, kind, where, required=kind not in ("defences", "certified")) or (
                ["no-defence"] if kind == "defences" else []
            )
        plans[kind] = []
        for i, entry in enumerate(entries):
            before = len(errors.errors)
            with errors.check():
                plans[kind].append(planner(entry, f"{where}{kind}[{i}]"))
            complete = complete and len(errors.errors) == before
    max_cells = DEFAULT_MAX_CELLS
    with errors.check():
        max_cells = _max_cells(data, where)
    built: dict[str, list] = {"metrics": [], "attacks": [], "defences": [], "certified": []}
    # An entry that failed counts as none: the grid is at least this big, so building the rest is bounded.
    size_ok = False
    with errors.check():
        _check_grid_size(plans, max_cells, where)
        size_ok = True
    if size_ok:  # a grid past max_cells is never built
        for kind, section in plans.items():
            for plan in section:
                with errors.check():
                    built[kind].extend(plan.build())
            if complete:
                with errors.check():
                    _no_duplicates(built[kind], where + kind)
    metrics, attacks, defences = built["metrics"], built["attacks"], built["defences"]
    protocol = None
    if "protocol" in data:
        with errors.check():
            protocol = _add_protocol(plugins, data["protocol"], attacks, where, built["certified"])
    if complete and size_ok:  # one `defence` column: a certified label may not repeat a defence's
        with errors.check():
            _no_duplicates([*defences, *built["certified"]], where + "defences + certified")
        for i, smoothing in enumerate(built["certified"]):  # e.g. mean-smoothing's low/high against a range
            for metric in metrics:
                with errors.check():
                    smoothing.check_metric(metric, f"{where}certified[{i}]")

    seed = data.get("seed", 0)
    with errors.check():
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{where}seed: {seed!r} must be an integer")
    numbers: dict[str, Any] = {}
    for key, default, low in (("batch_size", 4, 1), ("examples", 2, 0)):
        with errors.check():
            numbers[key] = _int(data, key, default, where, low=low)
    with errors.check():
        numbers["unit_timeout"] = _unit_timeout(data, where)
    numbers["metric_batch"] = DEFAULT_METRIC_BATCH
    with errors.check():
        if data.get("metric_batch") is not None:
            numbers["metric_batch"] = _int(data, "metric_batch", 1, where, low=1)
    numerics = Numerics()
    with errors.check():
        numerics = parse_numerics(data, where, device)
        assign_numerics([*metrics, *defences], numerics)  # part of their identity when not the default
    errors.raise_any()
    return RunConfig(
        source=source,
        images=images,
        mos=mos,
        max_side=max_side,
        output=output,
        device=device,
        dataset=dataset_config,
        batch_size=numbers["batch_size"],
        seed=seed,
        examples=numbers["examples"],
        metrics=metrics,
        attacks=attacks,
        defences=defences,
        executor=executor,
        ray=ray,
        raw=data,
        unit_timeout=numbers["unit_timeout"],
        certified=built["certified"],
        numerics=numerics,
        metric_batch=numbers["metric_batch"],
        protocol=protocol,
    )


def _add_protocol(
    plugins: InstalledPlugins, level: Any, attacks: list[AttackEntry], where: str, certified: list
) -> dict:
    """Append the protocol's attack entries to ``attacks`` (an entry equal to one of the user's is not
    added twice: the user's plays the role) and return what run.json records (analysis/protocol.py). The
    certified defences' radii become L2 budgets."""
    if level not in PROTOCOL_LEVELS:
        raise ConfigError(
            f"{where}protocol: {level!r} must be one of {', '.join(PROTOCOL_LEVELS)} "
            f"(docs/evaluation.md), or leave the key out"
        )
    study = [e.label for e in attacks if e.adaptive == "none"]
    by_key = {e.key(): e for e in attacks}
    roles: dict[str, ProtocolAttack] = {}
    names: dict[str, str] = {}
    radii = tuple(sorted({float(c.eps) for c in certified}))
    for spec in protocol_attacks(level, radii=radii):
        cls = plugins.get("attacks", spec.attack, f"{where}protocol ({spec.label})")
        entry = AttackEntry(
            _make(cls, spec.params, f"{where}protocol ({spec.label})"), spec.adaptive, spec.eot_samples, spec
        )
        twin = by_key.get(entry.key())
        if twin is None:
            attacks.append(entry)
            by_key[entry.key()] = entry
            twin = entry
        roles[twin.label], names[twin.label] = spec, entry.attack.label
    return describe_protocol(level, roles, study, names, radii)


def _each(items: list, make: Callable[[Any], Any]) -> list:
    """``[make(item) for item in items]``, with the mistakes of every item reported, not only the first's."""
    errors = _Collect()
    out: list = []
    for item in items:
        with errors.check():
            out.append(make(item))
    errors.raise_any()
    return out


def _unit_timeout(data: dict, where: str) -> float | None:
    """``unit_timeout``: seconds > 0, or null for no limit (docs/registry.md)."""
    value = data.get("unit_timeout", DEFAULT_UNIT_TIMEOUT)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise ConfigError(f"{where}unit_timeout: {value!r} must be a number of seconds > 0, or null for no limit")
    return float(value)


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
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        for same in (item.label, ("configuration", _unmarked(item))):  # jpeg and a sweep's jpeg[quality=50]
            if same in seen:
                raise ConfigError(
                    f"{where}: {item.label!r} is listed twice (entries {seen[same]} and {i} after sweeps); remove one"
                )
        seen[item.label] = seen[("configuration", _unmarked(item))] = i


def _unmarked(item: Any) -> Any:
    """What an item's label would be without a sweep's marks (``label_params``): one configuration, listed
    once plainly and once in a sweep at its default, gives the same value."""
    if isinstance(item, AttackEntry):
        return (_unmarked(item.attack), item.adaptive, item.eot_samples)
    if isinstance(item, Compose):
        return tuple(_unmarked(stage) for stage in item.stages)
    if isinstance(item, Plugin):
        return (item.kind, item.name, tuple(sorted((k, repr(v)) for k, v in item.config.items())))
    return item.label


@dataclass
class _ParamSets:
    """One entry's parameter sets, not yet expanded: ``sets`` (one per ``params`` item) x the sweep's axes."""

    cls: type
    sets: list[tuple[dict, str]]
    axes: list[list[tuple[str, Any]]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.sets) * math.prod(len(axis) for axis in self.axes)

    def expand(self) -> list[tuple[dict, str, frozenset[str]]]:
        """``(params, where, swept names)``: a swept parameter shows in the label even at its default."""
        swept = frozenset(axis[0][0] for axis in self.axes)
        return [
            ({**params, **dict(combo)}, w, swept) for params, w in self.sets for combo in itertools.product(*self.axes)
        ]


@dataclass
class _Plan:
    """A registry entry validated and counted; :meth:`build` makes its plugin instances."""

    where: str
    name: str
    count: int
    build: Callable[[], list]
    sizes: str = ""


def _max_cells(data: dict, where: str) -> int:
    value = data.get("max_cells", DEFAULT_MAX_CELLS)
    if isinstance(value, float) and value.is_integer():  # `max_cells: 1e6`
        value = int(value)
    return _int({"max_cells": value}, "max_cells", DEFAULT_MAX_CELLS, where, low=1)


def _check_grid_size(plans: dict[str, list[_Plan]], max_cells: int, where: str) -> None:
    """Refuse a grid above ``max_cells`` combinations per image before anything is expanded."""
    counts = {kind: max(1, sum(p.count for p in section)) for kind, section in plans.items() if kind != "certified"}
    counts["defences"] += sum(p.count for p in plans.get("certified", ()))  # cells beside the defences'
    total = math.prod(counts.values())
    if total <= max_cells:
        return
    culprit = max((p for section in plans.values() for p in section), key=lambda p: p.count)
    sizes = f" ({culprit.sizes})" if culprit.sizes else ""
    raise ConfigError(
        f"{where}the grid has {total:,} metric x attack x defence combinations per image ({counts['metrics']:,} x "
        f"{counts['attacks']:,} x {counts['defences']:,}), more than max_cells: {max_cells:,}; the largest entry, "
        f"{culprit.where.removeprefix(where)} ({culprit.name}), expands to {culprit.count:,}{sizes}. "
        f"Sweep fewer values, or raise `max_cells` if you mean it"
    )


def _param_sets(
    plugins: InstalledPlugins, kind: str, entry: Any, where: str, extra_keys: set[str] = ENTRY_KEYS
) -> _ParamSets:
    """One entry as (class, params sets, sweep axes) — a sweep or a params list gives several; nothing expanded."""
    if isinstance(entry, str):
        return _ParamSets(plugins.get(kind, entry, where), [({}, where)])
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a name or a mapping with `name`, got {type(entry).__name__}")
    if "name" not in entry:
        raise ConfigError(f"{where}: missing `name`")
    name = entry["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: must be a string")
    cls = plugins.get(kind, name, f"{where}.name")
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
        aliases = getattr(cls, "param_aliases", ())
        for key, values in canonical_params(sweep, declared, aliases, f"{where}.sweep").items():
            if key not in declared:
                raise ConfigError(
                    f"{where}.sweep.{key}: unknown parameter{did_you_mean(str(key), declared)}; "
                    f"allowed: {', '.join(declared) or '(none)'}"
                )
            if values == "presets":
                values = list(declared[key].presets)
                if not values:
                    raise ConfigError(f"{where}.sweep.{key}: {name!r} has no presets for {key!r}; list the values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.sweep.{key}: must be a non-empty list of values or `presets`")
            axes.append([(key, v) for v in values])
        return _ParamSets(cls, sets, axes)
    return _ParamSets(cls, sets)


def _sizes(plan: _ParamSets) -> str:
    parts = [f"params: {len(plan.sets)} sets"] if len(plan.sets) > 1 else []
    parts += [f"{axis[0][0]}: {len(axis)} values" for axis in plan.axes]
    return " x ".join(parts) if len(parts) > 1 or plan.axes else ""


def _make(cls: type, params: dict, where: str, label_params: frozenset[str] = frozenset()) -> Plugin:
    plugin = cls(where=where, **params)
    if label_params:
        plugin.label_params = label_params
    _check_weight_files(plugin, where)
    return plugin


def _check_weight_files(plugin: Plugin, where: str) -> None:
    """An explicit weights path (``weights_path:``) must name a file now, not when every cell has failed."""
    for param, path in explicit_weight_files(plugin):
        if not path.exists():
            raise ConfigError(
                f"{where}.{param}: {path} does not exist; give the path of the weights file "
                f"(a relative path is relative to the current folder), or remove `{param}` "
                f"for the default weights"
            )
        if not path.is_file():
            raise ConfigError(f"{where}.{param}: {path} is not a file (a folder?); give the path of the weights file")


def _plan_entry(plugins: InstalledPlugins, kind: str, entry: Any, where: str) -> _Plan:
    sets = _param_sets(plugins, kind, entry, where)
    return _Plan(
        where, sets.cls.name, sets.count, lambda: _each(sets.expand(), lambda pw: _make(sets.cls, *pw)), _sizes(sets)
    )


def _plan_attack(plugins: InstalledPlugins, entry: Any, where: str) -> _Plan:
    sets = _param_sets(plugins, "attacks", entry, where, ATTACK_ENTRY_KEYS)
    adaptive, eot = "none", 1
    if isinstance(entry, dict):
        adaptive = entry.get("adaptive", "none") or "none"
        if adaptive not in ADAPTIVE_MODES:
            raise ConfigError(f"{where}.adaptive: {adaptive!r} must be one of {', '.join(ADAPTIVE_MODES)}")
        eot = entry.get("eot_samples", 8 if "eot" in adaptive else 1)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ConfigError(f"{where}.eot_samples: {eot!r} must be an integer >= 1")
    if isinstance(entry, dict) and entry.get("budget") is not None:  # equal budgets (core/budget.py)
        norm, target = parse_budget(entry["budget"], sets.cls, where)
        native = strength_param(sets.cls, where).name
        if any(native in params for params, _ in sets.sets) or any(axis[0][0] == native for axis in sets.axes):
            raise ConfigError(
                f"{where}.{native}: a budget entry searches {native} itself; remove {native} or the budget"
            )

        def make(pw):
            return AttackEntry(BudgetedAttack(_make(sets.cls, *pw), norm, target, pw[1]), adaptive, eot)
    else:

        def make(pw):
            return AttackEntry(_make(sets.cls, *pw), adaptive, eot)

    return _Plan(where, sets.cls.name, sets.count, lambda: _each(sets.expand(), make), _sizes(sets))


def _plan_defence(plugins: InstalledPlugins, entry: Any, where: str) -> _Plan:
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
            stage = _plan_entry(plugins, "defences", sub, f"{where}[{j}]")
            if stage.count != 1:
                raise ConfigError(f"{where}[{j}]: sweeps are not allowed inside a composition")
            stages.append(stage)
        return _Plan(
            where, "+".join(s.name for s in stages), 1, lambda: [Compose(_each(stages, lambda s: s.build()[0]))]
        )
    return _plan_entry(plugins, "defences", entry, where)
