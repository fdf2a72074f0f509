"""The "no defence" baseline: returns the images unchanged, so a grid shows the raw attack."""

from __future__ import annotations

import torch

from iqadef import Defence, hookimpl


class NoDefence(Defence):
    """Identity: the images pass through untouched (the baseline row of every table)."""

    name = "no-defence"
    differentiable = True

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return images


@hookimpl
def iqadef_register_defences(register):
    register(NoDefence)
