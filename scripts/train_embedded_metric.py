"""Train ``tiny-iqa``, iqadef's embedded NR-IQA metric, on synthetic distortions of the bundled images.

Each training sample is a random crop of a bundled image (flipped, rotated by 90-degree steps,
colour channels shuffled), then left clean or distorted (JPEG via PIL, Gaussian blur, Gaussian
noise, contrast reduction, pixelation; sometimes two at once) at a random severity ``s`` in [0, 1].
The target is ``90 - 80 * s`` (90 clean, 10 worst), a MOS-like scale where higher is better.
Batches hold pairs of differently distorted versions of one crop; the loss is the mean squared
error plus a hinge on each pair's order. Four images are held out; the script reports Spearman's
rank correlation (SROCC) between predictions and targets on a fixed grid of distortions of the
held-out and of the training images, and the span of the scores over all bundled images and
distortions (the metric's ``range``, to copy into ``TinyIQA.range``).

Seeded, one CPU thread; about 2 CPU-minutes. Writes the state dict (``tiny_iqa.pt``) and a training
record (``tiny_iqa.json``) to ``src/iqadef/data/weights/``::

    python scripts/train_embedded_metric.py            # retrain the packaged weights
    python scripts/train_embedded_metric.py --out /tmp/w --epochs 10   # quick try elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import random
import time
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import spearmanr

from iqadef.plugins.metrics.embedded import INPUT_SIZE, SCORE_CENTRE, SCORE_SCALE, TinyIQANet, preprocess

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DIR = ROOT / "src" / "iqadef" / "data" / "images"
WEIGHTS_DIR = ROOT / "src" / "iqadef" / "data" / "weights"
HELD_OUT = ("chelsea", "rocket", "ihc", "gravel")
CLEAN_TARGET, WORST_TARGET = 90.0, 10.0
EVAL_SEVERITIES = (0.2, 0.4, 0.6, 0.8, 1.0)


# -- distortions: float RGB [3, H, W] in [0, 1], severity s in (0, 1] --------------------------------
def jpeg(image: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    quality = int(round(90 - 85 * s))  # 90 .. 5
    array = (image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1).contiguous()


def blur(image: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    sigma = 0.2 + 3.8 * s
    kernel = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(image[None], (kernel, kernel), (sigma, sigma), border_type="reflect",
                                          separable=True)[0]


def noise(image: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    std = 0.15 * s
    return (image + std * torch.randn(image.shape, generator=gen)).clamp(0, 1)


def contrast(image: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    factor = 1 - 0.8 * s
    mean = TF.rgb_to_grayscale(image).mean()
    return (mean + factor * (image - mean)).clamp(0, 1)


def pixelate(image: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    """Resolution loss: area-downscale by 1 + 5s, bilinear back up."""
    h, w = image.shape[-2:]
    factor = 1 + 5 * s
    small = F.interpolate(image[None], size=(max(1, round(h / factor)), max(1, round(w / factor))),
                          mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)


DISTORTIONS = {"jpeg": jpeg, "blur": blur, "noise": noise, "contrast": contrast, "pixelate": pixelate}


def target_of(severity: float) -> float:
    return CLEAN_TARGET - (CLEAN_TARGET - WORST_TARGET) * min(1.0, severity)


def load_images(folder: Path) -> dict[str, torch.Tensor]:
    images = {}
    for path in sorted(folder.glob("*.png")):
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        images[path.stem] = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if not images:
        raise SystemExit(f"no PNG images in {folder}; run scripts/make_bundled_images.py first")
    return images


# -- training samples ----------------------------------------------------------------------------
def random_crop(image: torch.Tensor, crop: int, rng: random.Random) -> torch.Tensor:
    """A random crop, randomly flipped/rotated by multiples of 90 degrees and with its colour channels
    shuffled: with ten training images, content augmentation is what keeps the net from memorising them."""
    h, w = image.shape[-2:]
    top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
    image = image[:, top:top + crop, left:left + crop]
    if rng.random() < 0.5:
        image = image.flip(-1)
    image = torch.rot90(image, rng.randint(0, 3), dims=(1, 2))
    return image[rng.sample(range(3), 3)].contiguous()


def random_distortion(image: torch.Tensor, rng: random.Random, gen: torch.Generator):
    """``image`` clean (20%), with one distortion (60%) or two (20%, severities add up); and its target."""
    roll = rng.random()
    if roll < 0.2:
        return image, target_of(0.0)
    if roll < 0.8:
        severity = rng.random()
        return DISTORTIONS[rng.choice(sorted(DISTORTIONS))](image, severity, gen), target_of(severity)
    first, second = rng.sample(sorted(DISTORTIONS), 2)
    s1, s2 = 0.6 * rng.random(), 0.6 * rng.random()
    return DISTORTIONS[second](DISTORTIONS[first](image, s1, gen), s2, gen), target_of(s1 + s2)


def random_pair(image: torch.Tensor, crop: int, rng: random.Random, gen: torch.Generator):
    """Two independently distorted versions of one random crop (so the ranking term compares like with like)."""
    base = random_crop(image, crop, rng)
    return random_distortion(base, rng, gen), random_distortion(base, rng, gen)


def training_input(crops: torch.Tensor, size: int) -> torch.Tensor:
    """What :func:`preprocess` does, but to ``size`` instead of 224 (cheaper; the net is fully
    convolutional with global pooling, so it runs at any size). Crops of ``size .. size * 256/224`` px
    cover the same scales as a 256 px image resized to 224."""
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def pair_loss(prediction: torch.Tensor, target: torch.Tensor, rank_weight: float) -> torch.Tensor:
    """MSE to the targets plus a hinge on each pair's order (rows 2i and 2i+1 share a crop)."""
    mse = F.mse_loss(prediction, target)
    d_pred = prediction[0::2] - prediction[1::2]
    d_target = target[0::2] - target[1::2]
    ranking = F.relu(0.5 * d_target.abs() - torch.sign(d_target) * d_pred)
    return mse + rank_weight * ranking.mean()


# -- evaluation grid -----------------------------------------------------------------------------
def evaluation_grid(images: dict[str, torch.Tensor], names, seed: int):
    """Every named image clean and at each distortion x severity: (image, target, distortion, name)."""
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for name in names:
        rows.append((images[name], CLEAN_TARGET, "clean", name))
        for distortion, fn in DISTORTIONS.items():
            for s in EVAL_SEVERITIES:
                rows.append((fn(images[name], s, gen), target_of(s), distortion, name))
    return rows


@torch.no_grad()
def predict(net: TinyIQANet, batch: list[torch.Tensor], chunk: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(batch), chunk):
        x = torch.stack(batch[i:i + chunk])
        out.append(SCORE_CENTRE + SCORE_SCALE * net(preprocess(x)))
    return torch.cat(out).numpy()


def srocc(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(spearmanr(predictions, targets).statistic)


def evaluate(net: TinyIQANet, rows) -> tuple[np.ndarray, np.ndarray]:
    predictions = predict(net, [r[0] for r in rows])
    return predictions, np.array([r[1] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=IMAGE_DIR)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--epochs", type=int, default=60,
                        help="one epoch = --samples-per-image samples (same-crop pairs) of each training image")
    parser.add_argument("--samples-per-image", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=112,
                        help="training crops are resized to this (the metric itself uses 224)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak of the one-cycle schedule")
    parser.add_argument("--rank-weight", type=float, default=1.0, help="weight of the same-crop ranking hinge")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)  # deterministic, and the machine is shared
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    images = load_images(args.images)
    missing = [n for n in HELD_OUT if n not in images]
    if missing:
        raise SystemExit(f"held-out images {missing} not found in {args.images}")
    train_names = [n for n in images if n not in HELD_OUT]
    print(f"train on {len(train_names)} images, hold out {list(HELD_OUT)}")

    net = TinyIQANet()
    n_params = sum(p.numel() for p in net.parameters())
    steps_per_epoch = len(train_names) * args.samples_per_image // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                   pct_start=0.1)
    held_rows = evaluation_grid(images, HELD_OUT, args.seed)
    train_rows = evaluation_grid(images, train_names, args.seed)

    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = [name for name in train_names for _ in range(args.samples_per_image // 2)]
        rng.shuffle(order)
        losses = []
        for step in range(steps_per_epoch):
            crop = rng.randint(args.train_size, round(args.train_size * 256 / INPUT_SIZE))  # one per batch
            names = order[step * args.batch_size // 2:(step + 1) * args.batch_size // 2]
            batch = [version for n in names for version in random_pair(images[n], crop, rng, gen)]
            x = torch.stack([b[0] for b in batch])
            target = (torch.tensor([b[1] for b in batch]) - SCORE_CENTRE) / SCORE_SCALE
            loss = pair_loss(net(training_input(x, args.train_size)), target, args.rank_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        if epoch % 10 == 0 or epoch == args.epochs:
            net.eval()
            pred, tgt = evaluate(net, held_rows)
            print(f"epoch {epoch:4d}  loss {np.mean(losses):.4f}  held-out SROCC {srocc(pred, tgt):.4f}  "
                  f"{time.perf_counter() - start:6.0f} s", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    net.eval()
    held_pred, held_tgt = evaluate(net, held_rows)
    train_pred, train_tgt = evaluate(net, train_rows)
    per_distortion = {}
    for distortion in DISTORTIONS:
        keep = [i for i, r in enumerate(held_rows) if r[2] in (distortion, "clean")]
        per_distortion[distortion] = round(srocc(held_pred[keep], held_tgt[keep]), 4)
    clean_wins = {}  # per held-out image: clean scored above its strongest version of each distortion
    for name in HELD_OUT:
        idx = {(r[2], r[1]): i for i, r in enumerate(held_rows) if r[3] == name}
        clean = held_pred[idx[("clean", CLEAN_TARGET)]]
        clean_wins[name] = all(clean > held_pred[idx[(d, target_of(1.0))]] for d in DISTORTIONS)
    everything = np.concatenate([held_pred, train_pred])
    low, high = float(everything.min()), float(everything.max())

    args.out.mkdir(parents=True, exist_ok=True)
    weights_file = args.out / "tiny_iqa.pt"
    torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, weights_file)
    record = {
        "metric": "tiny-iqa",
        "held_out_images": list(HELD_OUT),
        "train_images": train_names,
        "held_out_srocc": round(srocc(held_pred, held_tgt), 4),
        "held_out_srocc_by_distortion": per_distortion,
        "held_out_clean_above_strongest": clean_wins,
        "train_srocc": round(srocc(train_pred, train_tgt), 4),
        "range": [math.floor(low), math.ceil(high)],
        "score_min": round(low, 3),
        "score_max": round(high, 3),
        "clean_mean_score": round(float(np.mean([p for p, r in zip(np.concatenate([held_pred, train_pred]),
                                                                    held_rows + train_rows)
                                                 if r[2] == "clean"])), 3),
        "evaluation": "each image clean + " + ", ".join(DISTORTIONS) + f" at severities {list(EVAL_SEVERITIES)}; "
                      "target 90 - 80 * severity",
        "epochs": args.epochs,
        "steps": total_steps,
        "batch_size": args.batch_size,
        "train_size": args.train_size,
        "samples_per_image_per_epoch": args.samples_per_image,
        "lr": args.lr,
        "weight_decay": 1e-2,
        "rank_weight": args.rank_weight,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "parameters": n_params,
        "weights_sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    (args.out / "tiny_iqa.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
