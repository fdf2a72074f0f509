"""Helpers shared by the official-checkpoint metric tests: random weights in an official key layout,
and small distinct test images."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn


def random_state(meta_model: nn.Module, seed: int) -> OrderedDict:
    """Random weights with tame statistics (finite outputs through 100+ layers), keys/shapes of ``meta_model``."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for prefix, module in meta_model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if name == "num_batches_tracked":
                value = torch.tensor(100)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                value = {
                    "weight": torch.rand(t.shape, generator=g) * 0.5 + 0.5,
                    "bias": torch.randn(t.shape, generator=g) * 0.01,
                    "running_mean": torch.randn(t.shape, generator=g) * 0.01,
                    "running_var": torch.rand(t.shape, generator=g) + 0.5,
                }[name]
            elif isinstance(module, nn.PReLU):
                value = torch.full(t.shape, 0.25)
            elif name == "weight" and t.dim() >= 2:
                value = torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel())
            else:
                value = torch.randn(t.shape, generator=g) * 0.1
            state[dot + name] = value
    return state


def images(n: int, seed: int = 0, size=(40, 56)) -> torch.Tensor:
    """Distinct images (own brightness, colour and texture): pure noise would pool to the same features."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size[0]), torch.linspace(0, 1, size[1]), indexing="ij")
    out = []
    for _ in range(n):
        a, f, c = torch.rand(3, generator=g), torch.rand(1, generator=g) * 12 + 2, torch.rand(3, 1, 1, generator=g)
        pattern = torch.sin(f * (xx * a[0] + yy * a[1]) * 3.14) * 0.3 * a[2]
        out.append((c * 0.6 + 0.2 + pattern + 0.05 * torch.randn(3, *size, generator=g)).clamp(0, 1))
    return torch.stack(out)
