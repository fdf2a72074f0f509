"""Which torch device a ``device:`` value names: a leaf, so that the registry parser and the numerics
(``precision.py`` checks that a device runs the requested precision) share one owner."""

from __future__ import annotations

import re

import torch

from iqadef.core.errors import ConfigError

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(device: str) -> torch.device:
    """The torch device for a ``device:`` value; only devices a run can use (``meta`` holds no data,
    ``cuda:3`` on a two-GPU machine would fail every cell), checked before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    form = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", device)
    if form is None or (form.group(1) == "mps" and form.group(2) is not None):
        raise ConfigError(f"device: {device!r} is not a device iqadef can run on; use {DEVICE_FORMS}")
    kind, index = form.group(1), int(form.group(2) or 0)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} was asked for but CUDA is not available here; use `auto` or `cpu`")
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device: {device!r}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; use one of them or `auto`"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device: {device!r} was asked for but Apple's MPS backend is not available here; use `auto` or `cpu`"
        )
    if kind == "cpu" and index != 0:
        raise ConfigError(f"device: {device!r}: there is one CPU device; use `cpu`")
    return torch.device(device)
