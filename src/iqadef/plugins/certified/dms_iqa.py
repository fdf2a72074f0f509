"""``dms-iqa``: denoised median smoothing (Shumitskaya et al., "Stochastic BIQA: median randomized smoothing
for certified blind image quality assessment", arXiv 2411.12575 / CVIU 2025): the median of
``f(D(x + N(0, sigma^2 I)))`` with a denoiser ``D`` trained for that sigma, certified exactly as
``median-smoothing`` (Chiang et al. 2020; any deterministic function of the noisy image keeps the certificate).

The denoiser is trained by ``iqadef train-dms RUN_DIR --out dms.pt`` on Gaussian-noised copies of the run's
clean images with MSE + a pairwise ranking loss on the metric's scores of the denoised copies (their order must
follow the clean images' scores) + a target loss |f(D(x + noise)) - f(x)|, the three terms of the paper's
training scheme. Not the paper's network: a small residual CNN (docs/certified.md says so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import iqadef
from iqadef import (
    Command,
    ConfigError,
    Dataset,
    IqadefError,
    MetricSmoothing,
    Param,
    WeightsError,
    hookimpl,
    load_checkpoint,
    load_state_dict_strict,
    median_certificate,
    save_trained_weights,
    smoothing_params,
    trained_record_path,
)

TRAIN_COMMAND = "iqadef train-dms RUN_DIR --out dms.pt"


class Denoiser(nn.Module):
    """A small residual CNN (DnCNN-like): ``x_noisy - net(x_noisy)``, zero-padded 3x3 convs (size-preserving)."""

    def __init__(self, width: int = 32, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)  # starts as the identity: training can only improve on the noisy input
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.width, self.depth = width, depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


class DMSIQA(MetricSmoothing):
    """Median of f(denoiser(noisy copy)) over n copies, certified like median-smoothing (Shumitskaya et al. 2024).

    The denoiser (`weights_path`) is trained for `sigma` by `iqadef train-dms`; the certificate of
    median-smoothing (Chiang et al. 2020) holds unchanged, with probability >= 1 - alpha."""

    name = "dms-iqa"
    version = "1"
    params = smoothing_params() + (
        Param(
            "weights_path",
            Path,
            None,
            help=f"the denoiser's weights, trained for this sigma ({TRAIN_COMMAND})",
            nullable=True,
        ),
    )
    weights_path: str | None

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        if self.weights_path is None:
            raise ConfigError(
                f"{where or self.name}.weights_path: dms-iqa needs a trained denoiser; train one on a "
                f"finished run with `{TRAIN_COMMAND} --sigma {self.sigma:g}` and give its path"
            )

    def weights_in_use(self) -> tuple[Path, ...]:
        return (Path(self.weights_path),)

    def setup(self, device: torch.device) -> None:
        checkpoint = load_checkpoint(Path(self.weights_path))
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "sigma" not in checkpoint:
            raise WeightsError(
                f"{self.weights_path}: not a dms-iqa denoiser (expected the file `{TRAIN_COMMAND}` "
                f"writes: model, sigma, width, depth)"
            )
        if abs(float(checkpoint["sigma"]) - self.sigma) > 1e-9:
            raise ConfigError(
                f"dms-iqa: {self.weights_path} was trained for sigma {float(checkpoint['sigma']):g}, "
                f"not {self.sigma:g}; set `sigma: {float(checkpoint['sigma']):g}` or train for this sigma"
            )
        self.denoiser = Denoiser(int(checkpoint.get("width", 32)), int(checkpoint.get("depth", 5)))
        load_state_dict_strict(self.denoiser, checkpoint["model"], str(self.weights_path))

    def base(self, metric, noisy: torch.Tensor) -> torch.Tensor:
        return metric.score(self.denoiser(noisy).clamp(0.0, 1.0))

    def aggregate(self, samples, metric):
        return median_certificate(samples, self.eps, self.sigma, self.alpha)


# -- training -----------------------------------------------------------------------------------------
def ranking_loss(scores: torch.Tensor, reference: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Pairwise hinge: for each pair with ``reference[i] > reference[j]``, ``max(0, margin - (s_i - s_j))``,
    averaged (0 with fewer than two distinct references)."""
    diff_ref = reference[:, None] - reference[None, :]
    diff = scores[:, None] - scores[None, :]
    mask = diff_ref > 0
    if not mask.any():
        return scores.sum() * 0.0
    return torch.relu(margin - diff[mask]).mean()


def train_denoiser(
    images: list[torch.Tensor],
    metric,
    *,
    sigma: float,
    epochs: int = 50,
    batch_size: int = 4,
    lr: float = 1e-3,
    rank_weight: float = 1.0,
    target_weight: float = 1.0,
    seed: int = 0,
    width: int = 32,
    depth: int = 5,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a :class:`Denoiser` on ``images`` (``[3, H, W]`` each; a batch holds images of one size) with
    MSE + ``rank_weight`` * ranking loss + ``target_weight`` * |f(D) - f(x)| / range. Seeded; the global RNG is
    left untouched. Returns the state dict and a record (losses of the first and last epoch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Denoiser(width, depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    span = float(metric.range[1] - metric.range[0]) or 1.0
    by_size: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(tuple(img.shape), []).append(i)
    with torch.no_grad():
        clean_scores = {i: float(metric.score(images[i][None])) for i in range(len(images))}
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for indices in by_size.values():
            order = [indices[k] for k in torch.randperm(len(indices), generator=g).tolist()]
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                x = torch.stack([images[i] for i in idx])
                noisy = x + sigma * torch.randn(x.shape, generator=g)
                out = model(noisy)
                loss = nn.functional.mse_loss(out, x)
                if rank_weight or target_weight:
                    scores = metric.score(out.clamp(0, 1))
                    ref = torch.tensor([clean_scores[i] for i in idx])
                    loss = (
                        loss
                        + rank_weight * ranking_loss(scores / span, ref / span, margin=0.0)
                        + target_weight * (scores - ref).abs().mean() / span
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        history.append(total / max(count, 1))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, {
        "loss_first_epoch": history[0] if history else None,
        "loss_last_epoch": history[-1] if history else None,
        "epochs": epochs,
        "width": width,
        "depth": depth,
    }


def train_dms_from_run(
    run_dir: Path,
    out: Path,
    *,
    sigma: float,
    epochs: int = 50,
    batch_size: int = 4,
    lr: float = 1e-3,
    rank_weight: float = 1.0,
    target_weight: float = 1.0,
    seed: int = 0,
    metric: str | None = None,
) -> dict[str, Any]:
    """Train on the clean images of a run (its registry's dataset) against one of its metrics; write
    ``{model, sigma, width, depth}`` to ``out`` and the record to ``out`` with ``.json``."""

    run_dir = Path(run_dir)
    values = {
        "sigma": sigma,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "rank_weight": rank_weight,
        "target_weight": target_weight,
        "seed": seed,
    }
    for param in TRAIN_PARAMS:  # as a registry validates: finite, in range, one line naming the option
        param.validate(values[param.name], "--" + param.name.replace("_", "-"))
    trained_record_path(Path(out))  # an --out its own record would overwrite: refused before training
    info_file = run_dir / "run.json"
    if not info_file.is_file():
        raise IqadefError(f"{run_dir}: no run.json; give the folder of a finished `iqadef run` (its `output`)")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IqadefError(f"{info_file}: cannot be read ({exc}); run the registry again to write it") from None
    if not isinstance(info, dict) or not isinstance(info.get("registry"), dict) or not info.get("registry_file"):
        raise IqadefError(f"{info_file}: holds no registry; run the registry again with this iqadef to write it")
    config = iqadef.parse_run_config(dict(info["registry"]), Path(info["registry_file"]))
    labels = [m.label for m in config.metrics]
    chosen = config.metrics[labels.index(metric)] if metric in labels else None
    if metric is not None and chosen is None:
        raise IqadefError(f"--metric {metric!r}: not a metric of {run_dir} (it has {', '.join(labels)})")
    chosen = (chosen or config.metrics[0]).load("cpu")
    dataset = config.open_dataset(limit=info.get("limit")) if hasattr(config, "open_dataset") else None
    if dataset is None:
        dataset = Dataset(config.images, config.mos, max_side=config.max_side, limit=info.get("limit"))
    images = [dataset.load([item])[0] for item in dataset.items]
    if not images:
        raise IqadefError(f"{run_dir}: its dataset has no images to train on")
    state, record = train_denoiser(
        images,
        chosen,
        sigma=sigma,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        rank_weight=rank_weight,
        target_weight=target_weight,
        seed=seed,
    )
    record = {
        **record,
        "sigma": sigma,
        "metric": chosen.label,
        "images": len(images),
        "lr": lr,
        "batch_size": batch_size,
        "rank_weight": rank_weight,
        "target_weight": target_weight,
        "seed": seed,
        "run_dir": str(run_dir),
        "data": {"images": [{"name": item.name, "sha256": item.sha256, "role": "train"} for item in dataset.items]},
    }
    save_trained_weights(
        Path(out), {"model": state, "sigma": float(sigma), "width": record["width"], "depth": record["depth"]}, record
    )
    return record


#: What ``train-dms`` accepts (validated like registry parameters, so ``--sigma inf`` or ``--batch-size 0``
#: is one line naming the option, not a traceback or NaN weights).
TRAIN_PARAMS = (
    Param("sigma", float, 0.25, low=1e-6),
    Param("epochs", int, 50, low=1),
    Param("batch_size", int, 4, low=1),
    Param("lr", float, 1e-3, low=1e-12),
    Param("rank_weight", float, 1.0, low=0.0),
    Param("target_weight", float, 1.0, low=0.0),
    Param("seed", int, 0),
)


class TrainDMSCommand(Command):
    """``iqadef train-dms RUN_DIR --out dms.pt --sigma S``: train dms-iqa's denoiser on a run's clean images."""

    name = "train-dms"
    help = "train the dms-iqa denoiser on a run's clean images (MSE + ranking + target loss)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path, help="a finished run directory (its registry names the images)")
        parser.add_argument("--out", type=Path, required=True, help="where to write the weights (.pt)")
        parser.add_argument(
            "--sigma", type=float, default=0.25, help="the noise the denoiser is for (the entry's sigma)"
        )
        parser.add_argument("--epochs", type=int, default=50)
        parser.add_argument("--batch-size", type=int, default=4)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--rank-weight", type=float, default=1.0)
        parser.add_argument("--target-weight", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--metric", help="the metric label to train against (default: the run's first)")

    def run(self, args: argparse.Namespace) -> int:
        record = train_dms_from_run(
            args.run_dir,
            args.out,
            sigma=args.sigma,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            rank_weight=args.rank_weight,
            target_weight=args.target_weight,
            seed=args.seed,
            metric=args.metric,
        )
        print(json.dumps(record, indent=2, default=float))
        return 0


@hookimpl
def iqadef_register_certified(register):
    register(DMSIQA)


@hookimpl
def iqadef_register_commands(register):
    register(TrainDMSCommand)
