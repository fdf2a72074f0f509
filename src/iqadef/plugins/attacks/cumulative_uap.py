"""Cumulative UAP: a universal perturbation trained by plain gradient steps (no optimiser, no input clamp)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from iqadef import ConfigError, Metric, Param, attack_loss, hookimpl

from .uap import BENCHMARK_AMPLITUDES, UAP, _batches, fit_to_size


def train_cumulative_uap(
    metric: Metric,
    images: torch.Tensor,
    *,
    size: int = 256,
    eps: float = 0.1,
    lr: float = 1.0,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Train a universal perturbation ``[3, size, size]`` in [-eps, eps] by accumulating raw gradients.

    As in the reference (MSU_Metrics_Robustness_Benchmark ``methods/cumulative-uap/train.py``): the
    perturbation starts at 1e-4; each batch is scored at ``x + uap`` **without** clamping to [0, 1];
    the loss is the batch mean of ``1 - f/range``; the perturbation moves by ``-lr * gradient``
    (the reference: ``lr = 1``, the gradient itself) and is clipped to +-eps. ``resume``/``checkpoint``
    continue a killed training from its last finished epoch.
    """
    device = metric.device
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.full((1, 3, size, size), 1e-4, device=device)
    start = 0
    if resume is not None:
        noise = resume["perturbation"].to(device).view(1, 3, size, size).clone()
        generator.set_state(resume["rng"])
        start = int(resume["epoch"])
    steps = 0
    for epoch in range(start, epochs):
        for batch in _batches(images, batch_size, generator):
            batch = fit_to_size(batch.to(device=device, dtype=noise.dtype), size)
            with torch.enable_grad():
                leaf = noise.detach().requires_grad_(True)
                loss = attack_loss(metric, batch + leaf).mean()
                (grad,) = torch.autograd.grad(loss, leaf)
            noise = (noise - lr * grad).clamp(-eps, eps)
            steps += 1
        if checkpoint is not None:
            checkpoint({"perturbation": noise[0].cpu(), "epoch": epoch + 1, "rng": generator.get_state()})
    if steps == 0 and start < epochs:
        raise ConfigError("cumulative-uap: no training images were given")
    return noise.detach()[0]


class CumulativeUAP(UAP):
    """Cumulative UAP: a universal perturbation (256x256, +-0.1) trained by summing raw loss gradients.

    Reference: MSU_Metrics_Robustness_Benchmark ``robustness_benchmark/methods/cumulative-uap/train.py``
    (applied by ``utils/evaluate.py::run_uap`` as :class:`~iqadef.plugins.attacks.uap.UAP`: tiled,
    times ``amplitude``, added, clamped). Training differs from ``uap`` in the step (the gradient
    itself, no Adam) and in scoring ``x + uap`` unclamped.
    """

    name = "cumulative-uap"
    params = tuple(
        {
            "amplitude": Param(
                "amplitude",
                float,
                0.2,
                help="factor applied to the perturbation",
                low=0.0,
                presets=BENCHMARK_AMPLITUDES,
            ),
            "lr": Param("lr", float, 1.0, help="factor on the gradient step (the reference: 1)", low=0.0),
        }.get(p.name, p)
        for p in UAP.params
    )

    def train(
        self, metric: Metric, images: torch.Tensor, *, resume: dict | None = None, checkpoint: Any = None
    ) -> dict:
        return {
            "perturbation": train_cumulative_uap(
                metric,
                images,
                size=self.size,
                eps=self.eps,
                lr=self.lr,
                epochs=self.epochs,
                seed=self.train_seed,
                batch_size=self.batch_size,
                resume=resume,
                checkpoint=checkpoint,
            )
        }


@hookimpl
def iqadef_register_attacks(register):
    register(CumulativeUAP)
