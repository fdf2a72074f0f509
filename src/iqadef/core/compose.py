"""Composition of defences (``defences: [[diffpure, unsharp]]`` in a registry): stages applied in order."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from iqadef.core.base import Defence


def stage_seed(seed: int | None, index: int) -> int | None:
    """A distinct, reproducible seed for each stage of a composition."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Compose(Defence):
    """Several defences applied one after the other (randomized if any stage is; differentiable if all are)."""

    name = "compose"

    def __init__(self, stages: Sequence[Defence]):
        super().__init__()
        self.stages = list(stages)
        self.randomized = any(s.randomized for s in self.stages)  # type: ignore[misc]
        self.differentiable = all(s.differentiable for s in self.stages)  # type: ignore[misc]
        self.preserves_size = all(s.preserves_size for s in self.stages)  # type: ignore[misc]

    @property
    def label(self) -> str:
        return "+".join(s.label for s in self.stages)

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "stages": [s.identity() for s in self.stages]}

    def load(self, device: torch.device | str = "cpu") -> "Compose":
        for s in self.stages:
            s.load(device)
        self.device = torch.device(device)
        return self

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        for i, s in enumerate(self.stages):
            images = s.purify(images, seed=stage_seed(seed, i))
        return images

    def forward(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        for i, s in enumerate(self.stages):
            images = s.forward(images, seed=stage_seed(seed, i))
        return images
