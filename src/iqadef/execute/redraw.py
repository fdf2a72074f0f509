"""Fresh draws of a randomised defence for the robustness protocol's cells (flag e, docs/evaluation.md).

A cell scores x_a against one draw of a randomised defence (the evaluation seed). How much the verdict
depends on that draw is measured by scoring the same x_a against ``redraws`` more draws, with seeds the
attacker never saw (drawn from the run's seed, the defence, the draw's number and the batch). The spread
goes into the cell's score columns: :data:`REDRAW_COLUMNS`, normalised gains |f(x) - f(D_k(x_a))| / range
over the draws k (the cell's own draw included).
"""

from __future__ import annotations

from typing import Any

import torch

from iqadef.core.guard import check_images
from iqadef.store.artifacts import _seed

REDRAW_COLUMNS = ("redraw_gain_min", "redraw_gain_max", "redraw_gain_sd", "redraw_draws")


def wants_redraws(config: Any, unit: Any, d: int) -> bool:
    """Protocol cells of a randomised purifier (not a certified defence) get the re-draws."""
    entry = config.attacks[unit.attack]
    return (
        config.protocol is not None
        and getattr(entry, "protocol", None) is not None
        and d < len(config.defences)
        and bool(config.defences[d].randomized)
    )


def redraw_scores(
    worker: Any, unit: Any, d: int, x_adv: torch.Tensor, f_clean: torch.Tensor, f_dxa: torch.Tensor, adv_seal: Any
) -> dict[str, torch.Tensor]:
    """The :data:`REDRAW_COLUMNS` of defence ``d``'s cells: x_a purified with ``redraws`` fresh seeds and
    scored; every call goes through the worker's sandbox (a failure fails the cells, as any plugin call)."""

    cfg = worker.config
    defence, metric = cfg.defences[d], cfg.metrics[unit.metric]
    who = f"defence {defence.label!r}"
    low, high = metric.range
    span = float(high - low) or 1.0
    gains = [(f_clean - f_dxa).abs() / span]
    hashes = [i.sha256 for i in worker.batches[unit.batch]]
    for k in range(int(cfg.protocol.get("redraws", 0))):
        seed = _seed("redraw", cfg.seed, defence.key(), k, hashes)
        with torch.no_grad():
            dxa = worker.sandbox.call(who, "purify", lambda: defence.purify(x_adv, seed=seed), [adv_seal])
        dxa = check_images(dxa, x_adv, who, defence.preserves_size)
        f_k = worker.sandbox.score(metric, dxa, worker.sandbox.seal(dxa, "D(x_a) of a fresh draw"))
        gains.append((f_clean - f_k).abs() / span)
    stacked = torch.stack(gains)
    return {
        "redraw_gain_min": stacked.min(0).values,
        "redraw_gain_max": stacked.max(0).values,
        "redraw_gain_sd": stacked.std(0, unbiased=True) if len(gains) > 1 else torch.zeros_like(f_clean),
        "redraw_draws": torch.full_like(f_clean, float(len(gains))),
    }
