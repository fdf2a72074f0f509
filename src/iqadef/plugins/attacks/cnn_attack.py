"""FACPA (cnn-attack): a U-Net trained to perturb any image against one metric; one forward pass per image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from iqadef import (
    ConfigError,
    Metric,
    Param,
    WeightsError,
    attack_loss,
    hookimpl,
    load_checkpoint,
    load_state_dict_strict,
)

from ._unet import (
    OUTPUT_SCALE,
    UnetGenerator,
    normalize_and_scale,
    restore_global_rng,
    seeded_global_rng,
)
from .uap import BENCHMARK_AMPLITUDES, TrainedAttack, _batches, fit_to_size, tile_to

#: The side the reference crops test images to (a multiple of it) and trains on.
TILE = 256


def train_facpa(
    metric: Metric,
    images: torch.Tensor,
    *,
    size: int = TILE,
    lr: float = 1e-3,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    ngf: int = 64,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Train the FACPA generator; return its state dict.

    As in the reference (adversarial-defenses-for-iqa ``metrics/methods/cnn-attack/train.py``):
    ``UnetGenerator(3, 3, ngf, 'instance', 'relu')`` in training mode (dropout on), Adam; each batch
    ``x`` (fitted to ``size`` as for the UAPs) is attacked as ``clamp(x + tanh(G(x)) * 10/255)``
    (straight-through clamp), the loss is the batch mean of ``1 - f/range``, NaN gradients are zeroed
    and Adam steps. ``seed`` fixes the initial weights, the batch order and dropout.
    """
    if size % TILE:
        raise ConfigError(f"cnn-attack.size: {size} is not a multiple of {TILE} (the U-Net halves it 8 times)")
    device = metric.device
    order = torch.Generator().manual_seed(int(seed))
    with seeded_global_rng(seed, device) as rng_state:
        net = UnetGenerator(3, 3, ngf, norm_type="instance", act_type="relu").to(device).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        start = 0
        if resume is not None:
            net.load_state_dict(resume["generator"])
            optimizer.load_state_dict(resume["optimizer"])
            order.set_state(resume["rng"])
            start = int(resume["epoch"])
            restore_global_rng(resume["dropout_rng"], device)
        steps = 0
        for epoch in range(start, epochs):
            for batch in _batches(images, batch_size, order):
                batch = fit_to_size(batch.to(device=device, dtype=torch.float32), size)
                with torch.enable_grad():
                    attacked = batch + normalize_and_scale(net(batch))
                    attacked = attacked + (attacked.clamp(0.0, 1.0) - attacked).detach()
                    loss = attack_loss(metric, attacked).mean()
                    optimizer.zero_grad()
                    loss.backward()
                for p in net.parameters():
                    if p.grad is not None:
                        p.grad = torch.nan_to_num(p.grad)
                optimizer.step()
                steps += 1
            if checkpoint is not None:
                checkpoint(
                    {
                        "generator": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "rng": order.get_state(),
                        "dropout_rng": rng_state(),
                    }
                )
        if steps == 0 and start < epochs:
            raise ConfigError("cnn-attack: no training images were given")
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def facpa_perturbation(net: UnetGenerator, images: torch.Tensor) -> torch.Tensor:
    """The reference's test-time perturbation (``utils/cnn_evaluate.py::run``): the generator (eval mode)
    sees the top-left crop whose sides are multiples of 256; its output times 10/255 is tiled over
    the image. A side under 256 is zero-padded to 256 at the bottom/right (the reference means to, but
    its code fails there) and the output cropped back."""
    h, w = images.shape[-2:]
    ch, cw = (h // TILE) * TILE, (w // TILE) * TILE
    crop = images[..., : ch or h, : cw or w]
    crop = F.pad(crop, (0, max(0, TILE - crop.shape[-1]), 0, max(0, TILE - crop.shape[-2])))
    with torch.no_grad():
        delta = normalize_and_scale(net(crop))
    delta = delta[..., : ch or h, : cw or w]
    return torch.stack([tile_to(d, h, w) for d in delta])


class CnnAttack(TrainedAttack):
    """FACPA (Shumitskaya et al. 2023): a trained U-Net gives each image its perturbation in one pass.

    Reference: adversarial-defenses-for-iqa ``metrics/methods/cnn-attack/{train,run}.py`` and
    ``utils/cnn_evaluate.py``: the generator's output (within +-10/255) is multiplied by
    ``amplitude * 10`` and added, so the L-inf bound is ``amplitude * 100/255``. The generator is read
    from ``weights_path`` (the reference's saved state dict) or trained on ``train_dir`` (default: the
    bundled images) and cached by content like ``uap``.
    """

    name = "cnn-attack"
    result_param = "weights_path"
    norm = "linf"
    params = (
        Param(
            "amplitude",
            float,
            0.2,
            help="factor on the generator's output (times 10, as the reference)",
            low=0.0,
            presets=BENCHMARK_AMPLITUDES,
        ),
        Param(
            "weights_path",
            Path,
            None,
            help="a trained generator state dict (the reference's or this plugin's); null = train",
        ),
        Param("train_dir", Path, None, help="folder of training images; null = the bundled images"),
        Param(
            "train_dataset",
            str,
            None,
            help="train on a dataset instead (as the registry's `dataset:`, "
            "e.g. koniq10k, nips2017, builtin); overrides train_dir",
        ),
        Param("size", int, TILE, help="side of the training crops (a multiple of 256)", low=TILE),
        Param("lr", float, 1e-3, help="Adam learning rate", low=0.0),
        Param("epochs", int, 5, help="training epochs", low=1),
        Param("batch_size", int, 8, help="training batch size", low=1),
        Param("ngf", int, 64, help="generator width (the reference: 64)", low=1),
        Param("train_seed", int, 0, help="seed of the initial weights, training order and dropout"),
    )
    amplitude: float
    weights_path: str | None
    train_dir: str | None
    train_dataset: str | None
    size: int
    lr: float
    epochs: int
    batch_size: int
    ngf: int
    train_seed: int

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        self._nets: dict[tuple[str, str], UnetGenerator] = {}

    def bound(self) -> float:
        return OUTPUT_SCALE * self.amplitude * 10

    def training_recipe(self) -> dict:
        return {
            "size": self.size,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "ngf": self.ngf,
            "seed": self.train_seed,
        }

    def train(
        self, metric: Metric, images: torch.Tensor, *, resume: dict | None = None, checkpoint: Any = None
    ) -> dict:
        return train_facpa(
            metric,
            images,
            size=self.size,
            lr=self.lr,
            epochs=self.epochs,
            seed=self.train_seed,
            batch_size=self.batch_size,
            ngf=self.ngf,
            resume=resume,
            checkpoint=checkpoint,
        )

    def network(self, metric: Metric) -> UnetGenerator:
        memo = (metric.key(), str(metric.device))
        if memo not in self._nets:
            label = f"cnn-attack generator ({self.weights_path})"
            if self.weights_path is not None:
                if not Path(self.weights_path).is_file():
                    raise ConfigError(f"cnn-attack.weights_path: {self.weights_path} does not exist")
                state = load_checkpoint(self.weights_path)
                if not isinstance(state, dict):
                    raise WeightsError(f"{label}: expected a state dict, got {type(state).__name__}")
            else:
                state = self.trained_state(metric)
            net = UnetGenerator(3, 3, self.ngf, norm_type="instance", act_type="relu")
            load_state_dict_strict(net, state, label)
            self._nets[memo] = net.to(metric.device).eval()
        return self._nets[memo]

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        net = self.network(metric)
        delta = facpa_perturbation(net, images.detach().to(metric.device).float()).to(images)
        return (images + delta * self.amplitude * 10).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(CnnAttack)
