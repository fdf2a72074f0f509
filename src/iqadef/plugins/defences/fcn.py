"""FCN filter, the paper's own purifier: a three-layer convolutional net trained to map attacked images to clean ones.

Also home of :func:`train_fcn`, which trains it from (attacked, clean) pairs as the reference does, and
of the ``iqadef train-fcn`` command (registered through ``iqadef_register_commands``), which takes the
pairs from a finished run.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from kornia.metrics import ssim as kornia_ssim
from torch import nn

from iqadef import (
    Command,
    ConfigError,
    Defence,
    IqadefError,
    Param,
    WeightsError,
    hookimpl,
    load_checkpoint,
    load_state_dict_strict,
    read_image,
    save_trained_weights,
    trained_record_path,
)

#: File name of the weights shipped inside the package (``iqadef/data/weights/``).
PACKAGED_WEIGHTS = "fcn_tiny-iqa.pt"
#: Weights the reference study trained (msu-video-group/adversarial-defenses-for-iqa, defences/fcn/dfsrc/setup.sh).
REFERENCE_WEIGHTS_URL = "https://titan.gml-team.ru:5003/fsdownload/vbKqFGe3o/fcn_mse.pth"


class FCN(nn.Module):
    """Conv3x3(3->64) - LeakyReLU(0.2) - Conv3x3(64->16) - InstanceNorm - LeakyReLU - Conv3x3(16->3) - Tanh.

    Layer names (``conv1..3``) follow wianluna/adversarial_purification (defenses/conv_filter/fcn.py),
    so its checkpoints load; the instance norm has no affine parameters, hence no state-dict keys.
    The output is the image itself (not a residual); Tanh keeps it in [-1, 1], callers clamp to [0, 1].
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1)
        self.conv2 = nn.Conv2d(64, 16, 3, 1, 1)
        self.conv3 = nn.Conv2d(16, 3, 3, 1, 1)
        self.norm = nn.InstanceNorm2d(16)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv2(self.act(self.conv1(x))))
        return torch.tanh(self.conv3(self.act(x)))


def packaged_weights_path() -> Path | None:
    """Where the packaged FCN weights are, if this installation has them."""
    resource = importlib.resources.files("iqadef") / "data" / "weights" / PACKAGED_WEIGHTS
    return Path(str(resource)) if resource.is_file() else None


def unwrap_fcn_checkpoint(checkpoint: Any, label: str) -> dict[str, torch.Tensor]:
    """A bare state dict, or the reference's ``{'model': state_dict, 'epoch': n}``."""
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise WeightsError(f"{label}: expected an FCN state dict or a dict with 'model' holding one")


class FCNDefence(Defence):
    """FCN filter: small conv net trained attacked -> clean (the paper's method); output clamped to [0, 1].

    Reference: wianluna/adversarial_purification (defenses/conv_filter: fcn.py, train.py, defense.py)
    and msu-video-group/adversarial-defenses-for-iqa (metrics/defences/fcn/run.py). Weights: the
    ``weights_path`` given, else the packaged ``iqadef/data/weights/fcn_tiny-iqa.pt``; train new ones
    with ``iqadef train-fcn`` (:func:`train_fcn`). Size-preserving (zero-padded 3x3 convs).
    """

    name = "fcn"
    differentiable = True
    params = (
        Param(
            "weights_path",
            Path,
            None,
            help=f"FCN weights (state dict or {{'model': state dict}}); default: the packaged {PACKAGED_WEIGHTS}",
        ),
    )
    weights_path: str | None

    def weights_in_use(self) -> tuple[Path, ...]:
        """The file loaded (its sha256 is part of the identity: retrained weights reuse no cached result)."""
        path = Path(self.weights_path) if self.weights_path else packaged_weights_path()
        return (path,) if path is not None else ()

    def setup(self, device: torch.device) -> None:
        path = Path(self.weights_path) if self.weights_path else packaged_weights_path()
        if path is None:
            raise WeightsError(
                f"fcn: no weights: this installation has no packaged iqadef/data/weights/{PACKAGED_WEIGHTS} and no "
                f"`weights_path` was given. Train them with `iqadef train-fcn`, or pass `weights_path:` pointing at a "
                f"trained FCN (the reference's own weights are at {REFERENCE_WEIGHTS_URL})"
            )
        if not path.is_file():
            raise WeightsError(f"fcn: weights file {path} (given as `weights_path`) does not exist")
        network = FCN()
        load_state_dict_strict(network, unwrap_fcn_checkpoint(load_checkpoint(path), str(path)), str(path))
        self.network = network

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.network]

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return self.network(images).clamp(0.0, 1.0)


# -- training -----------------------------------------------------------------------------------


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5, valid region), as pytorch_msssim in the reference."""
    window = min(11, a.shape[-2], a.shape[-1])
    window -= 1 - window % 2  # odd
    return kornia_ssim(a, b, window, max_val=1.0, padding="valid").mean().item()


def _split(count: int, val_fraction: float, groups: Sequence[Any] | None) -> tuple[list[int], list[int]]:
    """First ``1 - val_fraction`` of the sorted groups train, the rest validate (the reference's split)."""
    keys = list(range(count)) if groups is None else list(groups)
    if len(keys) != count:
        raise ConfigError(f"train_fcn: {len(keys)} groups for {count} pairs; give one group per pair")
    ordered = sorted(set(keys), key=lambda k: (str(type(k)), k))
    if len(ordered) < 2:
        raise ConfigError("train_fcn: need at least two pairs (two groups) to split into training and validation")
    n_train = min(max(1, int((1.0 - val_fraction) * len(ordered))), len(ordered) - 1)
    train_keys = set(ordered[:n_train])
    train = [i for i, k in enumerate(keys) if k in train_keys]
    val = [i for i, k in enumerate(keys) if k not in train_keys]
    return train, val


def _crop(attacked: torch.Tensor, clean: torch.Tensor, size: int, generator: torch.Generator):
    height, width = attacked.shape[-2:]
    if height < size or width < size:
        raise ConfigError(f"train_fcn: crop {size} is larger than an image of {height}x{width}")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return attacked[..., top : top + size, left : left + size], clean[..., top : top + size, left : left + size]


def train_fcn(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    val_fraction: float = 0.2,
    seed: int = 0,
    crop: int | None = None,
    log: Callable[[str], None] | None = None,
    groups: Sequence[Any] | None = None,
    device: torch.device | str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train an :class:`FCN` to map attacked images to clean ones (MSE, Adam), keeping the best validation SSIM.

    ``pairs`` are ``(attacked, clean)`` tensors ``[3, H, W]`` in [0, 1]. The split is deterministic: the
    first ``1 - val_fraction`` of the pairs train, the rest validate, as in the reference. Pass
    ``groups`` (e.g. the source image name of each pair) to split by sorted group instead, so that one
    image attacked several ways never lands on both sides. ``crop`` takes a random aligned square of
    each training pair (images of different sizes otherwise go through one by one). ``seed`` fixes the
    initial weights, the batch order and the crops; the global RNG is left untouched.

    Returns the best state dict and a record: per-epoch ``train_loss``/``val_loss``/``val_ssim``,
    ``best_epoch``, ``best_val_ssim``, and for the best weights ``val_psnr_input`` (attacked vs clean)
    and ``val_psnr_output`` (purified vs clean), plus the split sizes.
    """
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf:
        raise ConfigError(f"train_fcn: epochs ({epochs}) and batch_size ({batch_size}) must be >= 1, lr ({lr}) > 0")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"train_fcn: val_fraction must be in (0, 1), got {val_fraction}")
    for i, (attacked, clean) in enumerate(pairs):
        if attacked.dim() != 3 or attacked.shape[0] != 3 or attacked.shape != clean.shape:
            raise ConfigError(
                f"train_fcn: pair {i} has shapes {tuple(attacked.shape)} and {tuple(clean.shape)}; "
                f"expected two equal [3, H, W] tensors"
            )
    train_idx, val_idx = _split(len(pairs), val_fraction, groups)
    device = torch.device(device) if device is not None else pairs[0][0].device
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = FCN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    say = log or (lambda message: None)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        attacked, clean = zip(*(pairs[i] for i in batch))
        if crop is not None:
            attacked, clean = zip(*(_crop(a, c, crop, generator) for a, c in zip(attacked, clean)))
        attacked = [a.to(device, torch.float32) for a in attacked]
        clean = [c.to(device, torch.float32) for c in clean]
        if len({a.shape for a in attacked}) == 1:
            return F.mse_loss(model(torch.stack(attacked)), torch.stack(clean))
        return torch.stack([F.mse_loss(model(a[None]), c[None]) for a, c in zip(attacked, clean)]).mean()

    def evaluate() -> tuple[float, float, float, float]:
        model.eval()
        losses, ssims, psnr_in, psnr_out = [], [], [], []
        with torch.no_grad():
            for i in val_idx:
                attacked, clean = (t.to(device, torch.float32)[None] for t in pairs[i])
                purified = model(attacked).clamp(0.0, 1.0)
                losses.append(F.mse_loss(purified, clean).item())
                ssims.append(_ssim(purified, clean))
                psnr_in.append(_psnr(attacked, clean))
                psnr_out.append(_psnr(purified, clean))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return mean(losses), mean(ssims), mean(psnr_in), mean(psnr_out)

    record: dict[str, Any] = {
        "train_loss": [],
        "val_loss": [],
        "val_ssim": [],
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "best_epoch": None,
        "best_val_ssim": None,
        "val_psnr_input": None,
        "val_psnr_output": None,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "crop": crop,
    }
    best_state = None
    for epoch in range(epochs):
        model.train()
        order = [train_idx[int(j)] for j in torch.randperm(len(train_idx), generator=generator)]
        epoch_losses = []
        for start in range(0, len(order), batch_size):
            loss = batch_loss(order[start : start + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(loss.item())
        val_loss, val_ssim, psnr_in, psnr_out = evaluate()
        record["train_loss"].append(sum(epoch_losses) / len(epoch_losses))
        record["val_loss"].append(val_loss)
        record["val_ssim"].append(val_ssim)
        if record["best_val_ssim"] is None or val_ssim > record["best_val_ssim"]:
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            record.update(best_epoch=epoch, best_val_ssim=val_ssim, val_psnr_input=psnr_in, val_psnr_output=psnr_out)
        say(
            f"fcn epoch {epoch + 1}/{epochs}: train mse {record['train_loss'][-1]:.6f}, val mse {val_loss:.6f}, "
            f"val ssim {val_ssim:.4f}, val psnr {psnr_in:.2f} -> {psnr_out:.2f} dB"
        )
    return best_state, record


# -- the `iqadef train-fcn` command: training data from a finished run ---------------------------


def collect_pairs(
    run_dir: Path, *, metric: str | None = None, attack: str | None = None
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], pd.DataFrame]:
    """(attacked, clean) image pairs of a run, one per (metric, attack, image), in a stable order.

    The run's adversarial cache holds every x_a as a PNG; ``results.parquet`` says which clean image and
    which attack each came from. Adaptive attacks are left out (their x_a depend on a defence).
    """
    table = run_dir / "results.parquet"
    if not table.is_file():
        raise IqadefError(f"{run_dir}: no results.parquet; run `iqadef run` first")
    df = pd.read_parquet(table)
    df = df[(df["status"] == "ok") & (df["adv_path"] != "")]
    if "adaptive" in df:
        df = df[df["adaptive"].fillna("none") == "none"]
    if metric:
        df = df[df["metric"] == metric]
    if attack:
        df = df[df["attack"] == attack]
    df = df.drop_duplicates(["metric", "attack", "image"]).sort_values(["metric", "attack", "image"])
    if df.empty:
        raise IqadefError(f"{run_dir}: no adversarial images match (metric={metric!r}, attack={attack!r})")
    pairs = []
    for row in df.itertuples():
        adv_file = run_dir / row.adv_path
        if not adv_file.is_file():
            raise IqadefError(f"{adv_file}: listed in results.parquet but missing; resume the run to recreate it")
        pairs.append((read_image(adv_file), read_image(Path(row.image_path))))
    return pairs, df


def seen_images(df: Any, val_fraction: float = 0.2) -> list[dict[str, str]]:
    """The images a training on ``df``'s pairs saw, with their sha256 and role (``train``, or ``validation``:
    these chose the kept epoch, so they are not held out either); what a run checks its images against."""
    train_idx, _ = _split(len(df), val_fraction, list(df["image"]))
    train = {df["image"].iloc[i] for i in train_idx}
    firsts = df.drop_duplicates("image")
    return [
        {"name": str(name), "sha256": str(sha), "role": "train" if name in train else "validation"}
        for name, sha in zip(firsts["image"], firsts.get("image_sha256", [""] * len(firsts)))
        if sha
    ]


def train_fcn_from_run(
    run_dir: Path,
    out: Path,
    *,
    epochs: int = 200,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    crop: int | None = None,
    metric: str | None = None,
    attack: str | None = None,
) -> dict[str, Any]:
    """Train on a run's pairs and write the weights to ``out`` (plus ``out`` with ``.json``: the record)."""
    trained_record_path(Path(out))  # an --out its own record would overwrite: refused before training
    pairs, df = collect_pairs(Path(run_dir), metric=metric, attack=attack)
    # split by image (the reference's 80/20 split of images), so no image is on both sides
    state, record = train_fcn(
        pairs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, crop=crop, groups=list(df["image"])
    )
    record = {
        **record,
        "pairs": len(pairs),
        "metrics": sorted(df["metric"].unique()),
        "attacks": sorted(df["attack"].unique()),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "crop": crop,
        "run_dir": str(run_dir),
        "data": {"images": seen_images(df)},
    }
    save_trained_weights(Path(out), {k: v.detach().cpu() for k, v in state.items()}, record)
    return record


class TrainFCNCommand(Command):
    """``iqadef train-fcn RUN_DIR --out fcn.pt``: train the FCN purifier on a run's adversarial cache."""

    name = "train-fcn"
    help = "train the FCN purifier on a run's adversarial cache"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, help="a finished run directory (its cache holds the pairs)")
        parser.add_argument("--out", type=Path, required=True, help="where to write the weights (.pt)")
        parser.add_argument("--epochs", type=int, default=200)
        parser.add_argument("--batch-size", type=int, default=4)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--crop", type=int, default=None, help="random crop size for training (default: whole images)"
        )
        parser.add_argument("--metric", help="only pairs attacked against this metric label")
        parser.add_argument("--attack", help="only pairs of this attack label")

    def run(self, args: argparse.Namespace) -> int:
        record = train_fcn_from_run(
            args.run_dir,
            args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            crop=args.crop,
            metric=args.metric,
            attack=args.attack,
        )
        print(json.dumps(record, indent=2, default=float))
        return 0


@hookimpl
def iqadef_register_defences(register):
    register(FCNDefence)


@hookimpl
def iqadef_register_commands(register):
    register(TrainFCNCommand)
