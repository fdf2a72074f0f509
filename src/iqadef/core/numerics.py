"""Run-level numerics of the networks: ``precision`` (fp32 | bf16 | fp16), ``compile`` (torch.compile) and
``channels_last`` for metrics and neural defences (registry keys; docs/registry.md, docs/performance.md).

A plugin takes part by returning its torch networks from :meth:`Plugin.precision_modules` (default: none,
so attacks, classic defences and scores ignore the keys). After the plugin is loaded, :func:`apply_precision`
changes each network in place:

* ``precision`` other than fp32: in the plugin's :attr:`~Plugin.precision_style` ``"cast"`` (default) the
  network's parameters and buffers are cast to the dtype and its ``forward`` casts floating inputs to it; in
  ``"autocast"`` (networks that manage dtypes themselves, DiffPure's UNet) the weights stay float32 and
  ``forward`` runs under ``torch.autocast``. Either way floating outputs come back as float32, so the plugin's
  own code (pre- and post-processing, the scores) runs as in fp32, and gradients flow through both casts
  (attacks differentiate through the metric);
* ``channels_last``: 4-D parameters and inputs in the channels-last memory format (outputs contiguous);
* ``compile``: ``nn.Module.compile()`` (torch.compile of the module's call, in place).

Non-default numerics are part of the plugin's identity (:meth:`Plugin.identity`): fp16 changes scores, and a
compiled or channels-last network may round differently, so a run under other numerics reuses no stored cell.
fp32 without compile or channels_last (the default) leaves identities, and results, as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from iqadef.core.devices import resolve_device
from iqadef.core.errors import ConfigError

#: ``precision:`` values and their dtypes.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STYLES = ("cast", "autocast")
KEYS = {
    "precision": "fp32 | bf16 | fp16: dtype of the metrics' and neural defences' networks (default fp32)",
    "compile": "true: torch.compile the metrics' and neural defences' networks (default false)",
    "channels_last": "true: channels-last memory format for those networks (default false)",
}


@dataclass(frozen=True)
class Numerics:
    """The run's ``precision``, ``compile`` and ``channels_last``."""

    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False

    @property
    def is_default(self) -> bool:
        return self == Numerics()

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def identity(self) -> dict[str, Any]:
        return {"precision": self.precision, "compile": self.compile, "channels_last": self.channels_last}


def parse_numerics(data: dict[str, Any], where: str, device: str | torch.device | None = None) -> Numerics:
    """The three registry keys, validated; ``device`` (the registry's ``device:``) must run the precision."""
    if isinstance(device, str):
        try:
            device = resolve_device(device)
        except ConfigError:
            device = None  # the `device:` check reports it
    if not isinstance(device, torch.device):
        device = None
    precision = data.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ConfigError(f"{where}precision: {precision!r} must be one of {', '.join(PRECISIONS)} (default fp32)")
    flags = {}
    for key in ("compile", "channels_last"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}: {value!r} must be true or false (default false)")
        flags[key] = value
    if device is not None and device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"{where}precision: bf16 is not supported by this GPU ({torch.cuda.get_device_name(device)}); "
            f"use fp16 or fp32"
        )
    return Numerics(precision, flags["compile"], flags["channels_last"])


def takes_numerics(plugin: Any) -> bool:
    """Whether ``plugin`` declares networks for the run-level numerics (overrides ``precision_modules``)."""
    method = getattr(type(plugin), "precision_modules", None)
    return method is not None and not getattr(method, "declares_no_networks", False)


def assign_numerics(plugins: list[Any], numerics: Numerics) -> None:
    """Give ``numerics`` to every plugin that takes them (stages of composed defences included)."""
    for plugin in plugins:
        stages = getattr(plugin, "stages", None)
        if stages:
            assign_numerics(list(stages), numerics)
        elif takes_numerics(plugin):
            plugin.numerics = numerics


def apply_precision(plugin: Any, config: Any = None) -> Any:
    """Apply the plugin's numerics to its loaded networks (idempotent); returns the plugin.

    ``config`` (a RunConfig) supplies the numerics for a plugin that was not given them when the registry
    was read (built in code); normally they are already on the plugin."""
    stages = getattr(plugin, "stages", None)
    if stages:
        for stage in stages:
            apply_precision(stage, config)
        return plugin
    if not takes_numerics(plugin):
        return plugin
    numerics = getattr(plugin, "numerics", None)
    if numerics is None and config is not None:
        numerics = getattr(config, "numerics", None)
    if numerics is None or numerics.is_default:
        return plugin
    style = getattr(plugin, "precision_style", "cast")
    if style not in STYLES:
        raise ConfigError(f"{plugin.name}: precision_style {style!r} must be one of {', '.join(STYLES)}")
    for module in plugin.precision_modules():
        prepare_module(module, numerics, style, plugin.device)
    return plugin


def prepare_module(
    module: torch.nn.Module, numerics: Numerics, style: str = "cast", device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """Change ``module`` in place for ``numerics`` (once; a second call with the same numerics does nothing)."""
    if getattr(module, "_iqadef_numerics", None) == numerics:
        return module
    if getattr(module, "_iqadef_numerics", None) is not None:
        raise RuntimeError(f"{type(module).__name__} was already prepared for {module._iqadef_numerics}")
    dtype = numerics.dtype
    low = dtype != torch.float32
    if low and style == "cast":
        module.to(dtype)
    if numerics.channels_last:
        module.to(memory_format=torch.channels_last)
    inner = module.forward
    device_type = torch.device(device).type
    cast_to = dtype if (low and style == "cast") else None

    def forward(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _inputs((args, kwargs), cast_to, numerics.channels_last)
        if low and style == "autocast":
            with torch.autocast(device_type, dtype=dtype):
                out = inner(*args, **kwargs)
        else:
            out = inner(*args, **kwargs)
        return _outputs(out, numerics.channels_last)

    module.forward = forward  # an instance attribute: nn.Module.__call__ finds it first
    if numerics.compile:
        module.compile()
    module._iqadef_numerics = numerics
    return module


def _inputs(value: Any, dtype: torch.dtype | None, channels_last: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if dtype is not None and value.is_floating_point() and value.dtype != dtype:
            value = value.to(dtype)
        if channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        return value
    if isinstance(value, tuple):
        return tuple(_inputs(v, dtype, channels_last) for v in value)
    if isinstance(value, list):
        return [_inputs(v, dtype, channels_last) for v in value]
    if isinstance(value, dict):
        return {k: _inputs(v, dtype, channels_last) for k, v in value.items()}
    return value


def _outputs(value: Any, channels_last: bool) -> Any:
    """Floating tensors back to float32 (and contiguous); containers rebuilt, other values as they are."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        if channels_last and value.dim() == 4:
            value = value.contiguous()
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_outputs(v, channels_last) for v in value)
    if isinstance(value, list):
        return [_outputs(v, channels_last) for v in value]
    if isinstance(value, dict):  # diffusers' outputs are OrderedDict subclasses: change their values in place
        for key in list(value.keys()):
            value[key] = _outputs(value[key], channels_last)
        return value
    return value
