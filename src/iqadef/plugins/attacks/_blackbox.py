"""Helpers shared by the black-box (score-query) attacks (private: not a plugin module).

A black-box attack only asks the metric for scores: every call goes through :func:`query_scores`,
under ``torch.no_grad()`` on detached images, so it works on metrics that have no gradient and never
builds an autograd graph. The reference runners (``metrics/methods/{parsimonious,patch-rs,grad-est,
onepixel}/run.py`` of adversarial-defenses-for-iqa) score one image per call; these attacks stack the
candidates of an iteration into as few calls as ``query_batch`` allows, which changes nothing but
the metric's float rounding on batches.

Random draws come from one CPU generator per image, seeded with ``seed + position in the batch``:
an image's result does not depend on the other images of its batch, and a reference loop that seeds
the global RNG the same way draws the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from iqadef import Attack, ConfigError, Metric, Param, QueryMetric


def query_batch_param(default: int = 64) -> Param:
    """The common ``query_batch`` parameter: the most images scored in one metric call (memory only)."""
    return Param(
        "query_batch",
        int,
        default,
        "most images per metric call (memory; results equal up to the metric's float rounding)",
        low=1,
    )


def query_scores(
    metric: Metric, images: torch.Tensor, query_batch: int, which: torch.Tensor | list[int] | None = None
) -> torch.Tensor:
    """The raw scores ``f(x)`` (``[N]``, float32, on the images' device), ``query_batch`` images per call.

    ``which[k]`` names the image of the attack's batch that ``images[k]`` is a candidate for (None: the
    batch itself, in order); a :class:`~iqadef.QueryMetric` (what the runner hands a black-box attack)
    counts the query against that image. A plain metric gets the same no-grad score calls."""
    if which is None:
        which = list(range(images.shape[0]))
    which = torch.as_tensor(which, dtype=torch.int64).reshape(-1)
    counted = isinstance(metric, QueryMetric)
    parts = []
    with torch.no_grad():
        for i in range(0, images.shape[0], query_batch):
            chunk = images[i : i + query_batch].detach()
            out = metric.score(chunk, which=which[i : i + query_batch]) if counted else metric.score(chunk)
            parts.append(out.detach().reshape(-1))
    return torch.cat(parts).float() if parts else images.new_zeros(0)


def score_sign(metric: Metric) -> int:
    """+1 when higher is better, -1 otherwise: ``sign * f`` is what every black-box attack maximises."""
    return 1 if metric.higher_is_better else -1


def image_seeds(seed: int, n: int) -> list[int]:
    """One seed per image of a batch (see the module docstring)."""
    return [(int(seed) + i) % (2**63) for i in range(n)]


def image_generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded by :func:`image_seeds` (draws are then moved to the device)."""
    return [Attack.generator(s, "cpu") for s in image_seeds(seed, n)]


def take_aliases(values: dict[str, Any], aliases: dict[str, str], where: str) -> dict[str, Any]:
    """``values`` with the reference's parameter names (``aliases``: reference name -> iqadef name) renamed,
    so that a preset copied from attack_presets.json or picked_presets_v1.csv works as written; giving
    both names with different values is a ConfigError."""
    values = dict(values)
    for alias, name in aliases.items():
        if alias in values:
            value = values.pop(alias)
            if name in values and values[name] != value:
                raise ConfigError(
                    f"{where}.{alias}: {alias} ({value!r}) and {name} ({values[name]!r}) name the "
                    f"same parameter; give one of them"
                )
            values[name] = value
    return values
