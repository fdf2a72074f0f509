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

from iqadef.config.registry import _make, load_run_config, parse_run_config, resolve_device
from iqadef.core.base import Attack, Defence, Metric, Plugin
from iqadef.core.compose import Compose
from iqadef.core.dataset import DEFAULT_MAX_SIDE, Dataset, builtin_images_dir, read_image
from iqadef.core.errors import ConfigError
from iqadef.core.params import canonical_params
from iqadef.core.plugins import InstalledPlugins, installed_plugins
from iqadef.core.renamed import renamed_registry_keyword
from iqadef.core.weights import fetch_missing

__all__ = ["load_attack", "load_defence", "load_images", "load_metric", "run_grid"]


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    """A ConfigError naming the argument, as the registry names a key: ``run_grid: limit=-1: expected ...``."""
    if not ok:
        raise ConfigError(f"{name}={value!r} ({type(value).__name__}): expected {expected}")


def _check_common(where: str, device: Any, plugins: Any, preset: Any = None) -> None:
    _check(
        f"{where}: device",
        device,
        isinstance(device, (str, torch.device)),
        "'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device",
    )
    _check(
        f"{where}: plugins",
        plugins,
        plugins is None or isinstance(plugins, InstalledPlugins),
        "None or an iqadef.core.plugins.InstalledPlugins",
    )
    _check(
        f"{where}: preset",
        preset,
        preset is None or (isinstance(preset, Mapping) and all(isinstance(k, str) for k in preset)),
        "None or a dict of parameter name: preset index, e.g. {'alpha': 3}",
    )


def _check_limit(where: str, limit: Any) -> None:
    _check(
        f"{where}: limit",
        limit,
        limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1),
        "None or an int >= 1 (the first N images)",
    )


def _load(
    kind: str,
    name: str,
    device: str | torch.device,
    plugins: InstalledPlugins | None,
    preset: Mapping[str, int] | None,
    params: dict[str, Any],
) -> Plugin:
    _check(
        f"load_{kind[:-1]}: name",
        name,
        isinstance(name, str) and bool(name),
        f"the name of a{'n' if kind[0] == 'a' else ''} {kind[:-1]} (`iqadef list {kind}`)",
    )
    _check_common(f"load_{kind[:-1]}", device, plugins, preset)
    plugins = plugins or installed_plugins()
    where = f"{kind[:-1]} {name!r}"
    cls = plugins.get(kind, name, where)
    declared = {p.name: p for p in cls.params}
    aliases = getattr(cls, "param_aliases", ())
    values = canonical_params(dict(params), declared, aliases, where)
    for key, index in canonical_params(dict(preset or {}), declared, aliases, f"{where}: preset").items():
        if key not in declared or not declared[key].presets:
            has = [p.name for p in cls.params if p.presets]
            raise ConfigError(
                f"{where}: preset={{{key!r}: ...}}: {name!r} has no presets for {key!r}; "
                f"parameters with presets: {', '.join(has) or '(none)'}"
            )
        presets = declared[key].presets
        if isinstance(index, bool) or not isinstance(index, int) or not -len(presets) <= index < len(presets):
            raise ConfigError(
                f"{where}: preset={{{key!r}: {index!r}}}: give an index from 0 to {len(presets) - 1} "
                f"into {key!r}'s presets {list(presets)}"
            )
        if key in values:
            raise ConfigError(f"{where}: {key!r} is given both as a value and as a preset; give one")
        values[key] = presets[index]
    plugin = _make(cls, values, where)
    fetch_missing([plugin])  # a missing weight file: one clear WeightsError saying where to put it
    return plugin.load(_device(device))


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(str(device))


@renamed_registry_keyword
def load_metric(
    name: str,
    *,
    device: str | torch.device = "auto",
    plugins: InstalledPlugins | None = None,
    preset: Mapping[str, int] | None = None,
    **params: Any,
) -> Metric:
    """A metric by name, its parameters as keywords, loaded on ``device``: ``metric(images) -> [B]`` scores.

    ``preset={"param": i}`` takes the ``i``-th of that parameter's presets (``iqadef list metrics``)."""
    return _load("metrics", name, device, plugins, preset, params)  # type: ignore[return-value]


@renamed_registry_keyword
def load_attack(
    name: str,
    *,
    device: str | torch.device = "auto",
    plugins: InstalledPlugins | None = None,
    preset: Mapping[str, int] | None = None,
    **params: Any,
) -> Attack:
    """An attack by name: ``attack.run(metric, images, seed=0) -> adversarial images``.

    ``load_attack("ifgsm", eps="4/255")`` or ``load_attack("ifgsm", preset={"alpha": 3})``."""
    return _load("attacks", name, device, plugins, preset, params)  # type: ignore[return-value]


@renamed_registry_keyword
def load_defence(
    name: str | Sequence[str],
    *,
    device: str | torch.device = "auto",
    plugins: InstalledPlugins | None = None,
    preset: Mapping[str, int] | None = None,
    **params: Any,
) -> Defence:
    """A defence by name: ``defence.purify(images, seed=0) -> purified images``.

    A list of names (``["jpeg", "unsharp"]``) composes them, as in a registry; parameters then go to
    ``load_defence`` of each stage, so give the stages as names only."""
    if isinstance(name, str):
        return _load("defences", name, device, plugins, preset, params)  # type: ignore[return-value]
    _check(
        "load_defence: name",
        name,
        isinstance(name, Sequence) and all(isinstance(n, str) for n in name),
        "a defence name or a list of defence names",
    )
    if params or preset:
        raise ConfigError(
            "load_defence([...]): a composition takes no parameters; load each stage with "
            "load_defence(name, **params) and compose them with iqadef.core.compose.Compose"
        )
    stages = [_load("defences", n, device, plugins, None, {}) for n in name]
    if len(stages) < 2:
        raise ConfigError("load_defence([...]): a composition needs at least two defences")
    return Compose(stages).load(_device(device))


def load_images(
    source: str | Path = "builtin", *, limit: int | None = None, max_side: int = DEFAULT_MAX_SIDE, stack: bool = True
) -> torch.Tensor | list[torch.Tensor]:
    """Images as a run reads them: float RGB in [0, 1], at most ``max_side`` pixels on a side.

    ``source`` is an image file, a folder of images (recursively, in name order, unreadable files left out
    with a warning, as in a run) or ``"builtin"`` (the bundled images). Returns a batch ``[B, 3, H, W]``;
    images of different sizes cannot be stacked: ``stack=False`` returns a list of ``[3, H, W]`` instead."""
    _check(
        "load_images: source",
        source,
        isinstance(source, (str, Path)) and bool(str(source)),
        "an image file, a folder of images or 'builtin'",
    )
    _check_limit("load_images", limit)
    _check(
        "load_images: max_side",
        max_side,
        isinstance(max_side, int) and not isinstance(max_side, bool) and max_side >= 1,
        "an int >= 1 (pixels)",
    )
    _check("load_images: stack", stack, isinstance(stack, bool), "True or False")
    path = builtin_images_dir() if source == "builtin" else Path(source).expanduser()
    if path.is_file():
        try:
            images = [read_image(path, max_side)]
        except Exception as exc:  # noqa: BLE001 - any decoder error: one line naming the file
            raise ConfigError(f"load_images: {path}: not a readable image ({type(exc).__name__}: {exc})") from None
    elif path.is_dir():
        dataset = Dataset(path, None, max_side=max_side, limit=limit)
        images = [read_image(item.path, max_side) for item in dataset.items]
    else:
        raise ConfigError(f"load_images: {path} does not exist; give an image file, a folder of images or 'builtin'")
    if not stack:
        return images
    sizes = sorted({tuple(img.shape[1:]) for img in images})
    if len(sizes) > 1:
        raise ConfigError(
            f"load_images: {path} holds images of {len(sizes)} sizes (e.g. {sizes[0]} and {sizes[1]}), "
            f"which do not stack into one batch; pass stack=False for a list"
        )
    return torch.stack(images)


@renamed_registry_keyword
def run_grid(
    config: Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    device: str | None = None,
    limit: int | None = None,
    fresh: bool = False,
    progress: bool | None = False,
    plugins: InstalledPlugins | None = None,
    verbose: bool = True,
    report: bool = False,
) -> pd.DataFrame:
    """Run (or resume) a grid and return its table (``results.parquet`` as a DataFrame, one row per cell).

    ``config`` is a registry file or the same content as a dict; relative paths in a dict are relative
    to the current folder. ``out`` overrides ``output`` (the run folder, also written: store, results.*);
    ``device`` overrides ``device``. Killed and started again, it resumes like ``iqadef run``.
    ``report=True`` also writes report.html/report.md. The table's ``attrs`` hold ``run_dir`` and ``files``
    (every file written, the report's included). ``verbose`` prints the opening line (grid size, cells to
    do, device) and where the results and the report are."""
    from iqadef.execute import run_grid as _run_grid

    _check(
        "run_grid: config",
        config,
        isinstance(config, (str, Path, Mapping)),
        "a dict (a registry's content) or the path of a registry file",
    )
    _check(
        "run_grid: out", out, out is None or (isinstance(out, (str, Path)) and bool(str(out))), "None or a folder path"
    )
    _check(
        "run_grid: device", device, device is None or isinstance(device, str), "None, 'auto', 'cpu', 'cuda' or 'cuda:N'"
    )
    _check_limit("run_grid", limit)
    for flag, value in (("fresh", fresh), ("verbose", verbose), ("report", report)):
        _check(f"run_grid: {flag}", value, isinstance(value, bool), "True or False")
    _check("run_grid: progress", progress, progress is None or isinstance(progress, bool), "True, False or None")
    _check(
        "run_grid: plugins",
        plugins,
        plugins is None or isinstance(plugins, InstalledPlugins),
        "None or an iqadef.core.plugins.InstalledPlugins",
    )
    plugins = plugins or installed_plugins()
    overrides = {"device": device}
    if isinstance(config, (str, Path)):
        run_config = load_run_config(config, plugins=plugins, overrides=overrides)
    else:
        data = {**dict(config), **{k: v for k, v in overrides.items() if v is not None}}
        run_config = parse_run_config(data, Path.cwd() / "<dict>", plugins=plugins)
    if out is not None:
        run_config.output = Path(out).expanduser().resolve()
    say = print if verbose else (lambda *args, **kwargs: None)
    summary = _run_grid(
        run_config, fresh=fresh, limit=limit, progress=progress, plugins=plugins, announce=print if verbose else None
    )
    files = {name: Path(path) for name, path in summary.files.items()}
    if report:
        from iqadef.report import write_report

        files.update({Path(path).name: Path(path) for path in write_report(summary.run_dir).values()})
    table = pd.read_parquet(files["results.parquet"])
    table.attrs.update(run_dir=str(summary.run_dir), files={name: str(path) for name, path in files.items()})
    say(
        f"results: {files['results.parquet']}; "
        + (
            f"report: {files['report.html']}"
            if "report.html" in files
            else f"report: run_grid(..., report=True) or `iqadef report {summary.run_dir}` writes it"
        )
    )
    return table
