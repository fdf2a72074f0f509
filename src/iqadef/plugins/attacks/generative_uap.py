"""Generative UAP: a U-Net maps one fixed noise image to the universal perturbation; the net is trained."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from iqadef import ConfigError, Metric, Param, attack_loss, hookimpl

from ._unet import (
    OUTPUT_SCALE,
    UnetGenerator,
    normalize_and_scale,
    restore_global_rng,
    seeded_global_rng,
)
from .uap import BENCHMARK_AMPLITUDES, UAP, _batches, fit_to_size, load_perturbation


def train_generative_uap(
    metric: Metric,
    images: torch.Tensor,
    *,
    size: int = 256,
    eps: float = 10 / 255,
    lr: float = 1e-3,
    epochs: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    ngf: int = 64,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Train the generator and return the perturbation it makes, ``[3, size, size]`` in +-10/255.

    As in the reference (MSU_Metrics_Robustness_Benchmark ``methods/generative-uap/train.py``): the
    input ``z`` is uniform noise in [0, 1) ``[1, 3, size, size]``, the generator a
    ``UnetGenerator(3, 3, ngf, 'instance', 'relu')`` in training mode (dropout on), the perturbation
    ``tanh(G(z)) * 10/255``; each batch is ``clamp(x + delta)`` (straight-through), the loss the batch
    mean of ``1 - f/range``, Adam steps the generator, and ``z`` itself is clipped to +-eps after each
    step (it is not optimised: the clip maps the first draw into [0, eps]). The returned perturbation
    is one more forward pass, still in training mode. ``seed`` fixes ``z``, the batch order and dropout.
    """
    if size % 256:
        raise ConfigError(f"generative-uap.size: {size} is not a multiple of 256 (the U-Net halves it 8 times)")
    device = metric.device
    order = torch.Generator().manual_seed(int(seed))
    z = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(int(seed))).to(device)
    with seeded_global_rng(seed, device) as rng_state:
        net = UnetGenerator(3, 3, ngf, norm_type="instance", act_type="relu").to(device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        start = 0
        if resume is not None:
            net.load_state_dict(resume["generator"])
            optimizer.load_state_dict(resume["optimizer"])
            z = resume["z"].to(device)
            order.set_state(resume["rng"])
            start = int(resume["epoch"])
            restore_global_rng(resume["dropout_rng"], device)
        steps = 0
        for epoch in range(start, epochs):
            for batch in _batches(images, batch_size, order):
                batch = fit_to_size(batch.to(device=device, dtype=z.dtype), size)
                with torch.enable_grad():
                    attacked = batch + normalize_and_scale(net(z))
                    attacked = attacked + (attacked.clamp(0.0, 1.0) - attacked).detach()
                    loss = attack_loss(metric, attacked).mean()
                    optimizer.zero_grad()
                    loss.backward()
                optimizer.step()
                z.clamp_(-eps, eps)
                steps += 1
            if checkpoint is not None:
                checkpoint(
                    {
                        "generator": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "z": z.cpu(),
                        "epoch": epoch + 1,
                        "rng": order.get_state(),
                        "dropout_rng": rng_state(),
                    }
                )
        if steps == 0 and start < epochs:
            raise ConfigError("generative-uap: no training images were given")
        with torch.no_grad():
            return (normalize_and_scale(net(z)))[0]


class GenerativeUAP(UAP):
    """Generative UAP: a universal perturbation (256x256, +-10/255) produced by a U-Net from fixed noise.

    Reference: MSU_Metrics_Robustness_Benchmark ``robustness_benchmark/methods/generative-uap/train.py``
    (applied by ``utils/evaluate.py::run_uap`` as :class:`~iqadef.plugins.attacks.uap.UAP`: tiled,
    times ``amplitude``, added, clamped). L-inf bound ``10/255 * amplitude``.
    """

    name = "generative-uap"
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
            "eps": Param(
                "eps",
                float,
                10 / 255,
                help="clip of the generator's input noise (the output is bounded by 10/255 through tanh)",
                low=0.0,
            ),
            "lr": Param("lr", float, 1e-3, help="Adam learning rate of the generator", low=0.0),
            "epochs": Param("epochs", int, 1, help="training epochs", low=1),
        }.get(p.name, p)
        for p in UAP.params
    ) + (Param("ngf", int, 64, help="generator width (the reference: 64)", low=1),)
    ngf: int

    def bound(self) -> float:
        return OUTPUT_SCALE * self.amplitude

    def training_recipe(self) -> dict:
        return {**super().training_recipe(), "ngf": self.ngf}

    def perturbation(self, metric: Metric) -> torch.Tensor:
        if self.perturbation_path is not None:
            return load_perturbation(self.perturbation_path).clamp(-OUTPUT_SCALE, OUTPUT_SCALE)
        return self.trained_state(metric)["perturbation"].float()

    def train(
        self, metric: Metric, images: torch.Tensor, *, resume: dict | None = None, checkpoint: Any = None
    ) -> dict:
        return {
            "perturbation": train_generative_uap(
                metric,
                images,
                size=self.size,
                eps=self.eps,
                lr=self.lr,
                epochs=self.epochs,
                seed=self.train_seed,
                batch_size=self.batch_size,
                ngf=self.ngf,
                resume=resume,
                checkpoint=checkpoint,
            )
        }


@hookimpl
def iqadef_register_attacks(register):
    register(GenerativeUAP)
