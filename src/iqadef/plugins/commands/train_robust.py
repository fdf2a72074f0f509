"""``iqadef train-robust METRIC --method at|free-at|nt --out robust.pt``: the training-based defences of the
benchmark (Gushchin et al., ICML 2025): fine-tune a metric to resist attacks and write a checkpoint that the
metric loads with its ``weights_path`` parameter, so ``{name: tiny-iqa, weights_path: robust.pt}`` is an
ordinary grid metric (its own identity and cache key: the file's sha256).

- ``at``: adversarial training with score correction (Chistyakova et al. 2024, ``wianluna/metrics_at``);
- ``free-at``: "free" adversarial training (Shafahi et al. 2019), the same targets and loss;
- ``nt``: gradient-norm regularisation (Liu et al., CVPR 2024, ``YangiD/DefenseIQA-NT``).

Targets: the dataset's MOS when it has them (the references train on KonIQ-10k / LIVEC); otherwise the original
metric's own clean scores (self-distillation, iqadef's addition). The maths is in ``_robust_training.py``;
docs/defences.md ("Training-based") and docs/fidelity.md say what differs from the reference code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import iqadef
from iqadef import Command, IqadefError, hookimpl, load_checkpoint, parse_dataset, resolve_device, save_trained_weights

from ._robust_training import RobustConfig, checkpoint_for, resume_path, train_robust

RECORD_KEY = "iqadef_training"


def metric_from_argument(text: str):
    """``tiny-iqa`` or a YAML mapping as in a registry (``{name: linearity, preprocess: official}``)."""
    import yaml

    try:
        entry = yaml.safe_load(text) if text.lstrip().startswith("{") else {"name": text}
    except yaml.YAMLError as exc:
        raise IqadefError(f"METRIC {text!r}: not a metric name or a YAML mapping ({exc})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise IqadefError(f"METRIC {text!r}: give a metric name (`iqadef list metrics`) or {{name: ..., key: value}}")
    params = dict(entry)
    cls = iqadef.installed_plugins().get("metrics", params.pop("name"), where="train-robust METRIC")
    return lambda: cls(where="train-robust METRIC", **params)


def open_training_data(args: argparse.Namespace):
    """The dataset of ``--dataset``/``--images`` (as a registry's ``dataset:``), minus ``--exclude`` names."""
    import yaml

    if args.images is not None:
        value: Any = {"images": str(args.images)}
        if args.mos is not None:
            value["mos"] = str(args.mos)
    else:
        text = args.dataset or "builtin"
        value = yaml.safe_load(text) if text.lstrip().startswith("{") else text
        if args.mos is not None:
            raise IqadefError("--mos goes with --images FOLDER (a dataset plugin brings its own MOS)")
    if isinstance(value, str) and (args.split or args.sample):
        value = {"name": value}
    if isinstance(value, dict):
        if args.split:
            value["split"] = args.split
        if args.sample:
            value["sample"] = args.sample
        value.setdefault("max_side", args.max_side)
    dataset = parse_dataset(value, Path.cwd(), iqadef.installed_plugins(), where="--dataset").open(limit=args.limit)
    excluded = set(args.exclude or [])
    unknown = excluded - {item.name for item in dataset.items}
    if unknown:
        raise IqadefError(f"--exclude {sorted(unknown)[0]!r}: no image of that name in the training data")
    items = [item for item in dataset.items if item.name not in excluded]
    if not items:
        raise IqadefError("train-robust: no training image left (check --dataset/--images and --exclude)")
    return dataset, items


def _fingerprint(metric, config: RobustConfig, items, use_mos: bool) -> str:
    blob = json.dumps(
        {
            "metric": metric.identity(),
            "config": asdict(config),
            "images": [[i.name, i.sha256, i.mos if use_mos else None] for i in items],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def run_training(args: argparse.Namespace) -> dict[str, Any]:

    make_metric = metric_from_argument(args.metric)
    config = RobustConfig(
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eps=args.eps / 255,
        step=None if args.step is None else args.step / 255,
        init=args.init,
        replays=args.replays,
        penalty=args.penalty,
        correction=args.correction,
        gamma=args.gamma,
        nt_weight=args.nt_weight,
        nt_h=args.nt_h,
        crop=args.crop,
        crops_per_image=args.crops_per_image,
        freeze_bn=args.freeze_bn,
        seed=args.seed,
        attack_objective=args.attack_objective,
    ).resolved()
    device = resolve_device(args.device)
    dataset, items = open_training_data(args)
    use_mos = bool(dataset.has_mos) and all(item.mos is not None for item in items) and not args.self_distill
    metric, reference = make_metric(), make_metric()
    fingerprint = _fingerprint(metric, config, items, use_mos)
    out = Path(args.out)
    record_file = out.with_suffix(".json")
    if out.is_file() and record_file.is_file():
        try:
            previous = json.loads(record_file.read_text())
        except ValueError:
            previous = {}
        if previous.get("fingerprint") == fingerprint:
            print(f"train-robust: {out} is already trained with these arguments and data (nothing to do)")
            return previous
    metric.load(device)
    reference.load(device)
    images = [dataset.load([item])[0] for item in items]
    started = time.monotonic()
    summary = train_robust(
        metric,
        reference,
        images,
        [item.mos for item in items] if use_mos else None,
        config,
        out=out,
        fingerprint=fingerprint,
        device=device,
        progress=not args.quiet,
        stop_after_epoch=args.stop_after_epoch,
    )
    if "stopped_after_epoch" in summary:
        return summary
    probe = images[0][None, :, : config.crop, : config.crop].to(device)
    checkpoint, mapped = checkpoint_for(metric, tuple(summary["mapping"]), probe)
    history = summary["history"]
    record = {
        "kind": iqadef.TRAINING_RECORD_KIND,
        "method": config.method,
        "metric": metric.label,
        "metric_identity": metric.identity(),
        "data": {
            "source": args.dataset or (str(args.images) if args.images else "builtin"),
            "targets": "mos" if use_mos else "self-distillation (the original metric's clean scores)",
            "images": [{"name": i.name, "sha256": i.sha256, "mos": i.mos if use_mos else None} for i in items],
        },
        "seed": config.seed,
        "epochs": config.epochs,
        "final_losses": history[-1] if history else None,
        "history": history,
        "mapping": summary["mapping"],
        "mapping_in_checkpoint": mapped,
        "config": asdict(config),
        "device": str(device),
        "seconds_this_call": round(time.monotonic() - started, 1),
        "fingerprint": fingerprint,
    }
    if not mapped:
        print(
            f"train-robust: warning: {metric.label}'s score is not affine in its last layer, so the fitted "
            f"mapping k={summary['mapping'][0]:.4g}, b={summary['mapping'][1]:.4g} is not in the checkpoint "
            f"(its scores keep the fine-tuned scale)"
        )
    if isinstance(checkpoint, dict) and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        checkpoint = {**checkpoint, RECORD_KEY: json.dumps(record, default=float)}
    save_trained_weights(out, checkpoint, record)
    resume_path(out).unlink(missing_ok=True)
    return record


def training_record(checkpoint: Path) -> dict[str, Any]:
    """The record of a checkpoint: its ``.json`` beside it, else the ``iqadef_training`` key inside it."""

    sidecar = Path(checkpoint).with_suffix(".json")
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("kind") == iqadef.TRAINING_RECORD_KIND:
            return record
    if not Path(checkpoint).is_file():
        raise IqadefError(f"--show {checkpoint}: no such file")
    data = load_checkpoint(checkpoint, allow_numpy=True)
    if isinstance(data, dict) and isinstance(data.get(RECORD_KEY), str):
        return json.loads(data[RECORD_KEY])
    raise IqadefError(
        f"--show {checkpoint}: no training record (neither {sidecar.name} from train-robust nor an "
        f"`{RECORD_KEY}` entry in the checkpoint)"
    )


class TrainRobustCommand(Command):
    """``iqadef train-robust METRIC --method at|free-at|nt --out robust.pt``: fine-tune a metric to resist attacks."""

    name = "train-robust"
    help = "fine-tune a metric against attacks (adversarial training, free AT, or gradient-norm regularisation)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "metric", nargs="?", help="metric name or YAML mapping, e.g. tiny-iqa or '{name: linearity}'"
        )
        parser.add_argument(
            "--show",
            type=Path,
            metavar="CHECKPOINT",
            help="print the training record of a checkpoint this command wrote, and exit",
        )
        parser.add_argument("--method", choices=("at", "free-at", "nt"), default="at")
        parser.add_argument("--out", type=Path, help="the checkpoint to write (.pt; record in .json)")
        parser.add_argument("--dataset", help="a dataset name or YAML mapping as in a registry (default builtin)")
        parser.add_argument("--images", type=Path, help="a folder of images instead of --dataset")
        parser.add_argument("--mos", type=Path, help="with --images: a CSV of MOS (else self-distillation)")
        parser.add_argument("--split", help="the dataset's split (e.g. train)")
        parser.add_argument("--sample", type=int, help="a seeded sample of this many images")
        parser.add_argument("--limit", type=int, help="the first N images only")
        parser.add_argument("--exclude", action="append", metavar="NAME", help="leave this image out (held-out)")
        parser.add_argument("--max-side", type=int, default=512, help="images larger are downscaled when read")
        parser.add_argument(
            "--self-distill", action="store_true", help="targets from the original metric even when the data has MOS"
        )
        parser.add_argument("--epochs", type=int, help="default: at/free-at 30 (metrics_at), nt 16 (DefenseIQA-NT)")
        parser.add_argument("--batch-size", type=int, help="default: at/free-at 32, nt 16")
        parser.add_argument("--lr", type=float, help="Adam lr (default: at/free-at 1e-4, nt 2e-5)")
        parser.add_argument("--weight-decay", type=float, help="default: at/free-at 0, nt 5e-4")
        parser.add_argument("--eps", type=float, default=4.0, help="attack budget in /255 (at, free-at; default 4)")
        parser.add_argument("--step", type=float, help="attack step in /255 (default: at 1.25*eps, free-at eps)")
        parser.add_argument(
            "--init",
            choices=("zero", "uniform"),
            default="zero",
            help="at: FGSM start (uniform = metrics_at's 'free_fgsm' mode)",
        )
        parser.add_argument(
            "--attack-objective",
            choices=("loss", "score"),
            help="what the training attack raises: the training loss (metrics_at; default with "
            "MOS) or the score (default under self-distillation)",
        )
        parser.add_argument("--replays", type=int, default=4, help="free-at: replays per minibatch (m)")
        parser.add_argument("--penalty", type=float, default=1.0, help="score correction strength (metrics_at)")
        parser.add_argument("--correction", choices=("ssim", "none"), default="ssim")
        parser.add_argument("--gamma", type=float, default=0.0, help="monotonicity regularisation weight (off)")
        parser.add_argument("--nt-weight", type=float, default=1e-3, help="nt: lambda (DefenseIQA-NT --weight)")
        parser.add_argument("--nt-h", type=float, default=1e-2, help="nt: finite-difference step h")
        parser.add_argument("--crop", type=int, default=224, help="training crops of this side (px)")
        parser.add_argument("--crops-per-image", type=int, default=1)
        parser.add_argument("--freeze-bn", action="store_true", help="keep batch norm in eval mode (not reference)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
        parser.add_argument("--quiet", action="store_true", help="no progress lines")
        parser.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)

    def run(self, args: argparse.Namespace) -> int:
        if args.show is not None:
            print(json.dumps(training_record(args.show), indent=2, default=float))
            return 0
        if not args.metric or args.out is None:
            raise IqadefError(
                "usage: iqadef train-robust METRIC --out robust.pt [--method at|free-at|nt] (or --show robust.pt)"
            )
        record = run_training(args)
        shown = {k: v for k, v in record.items() if k not in ("history", "metric_identity", "config")}
        if "data" in shown:
            shown["data"] = {**shown["data"], "images": len(shown["data"]["images"])}
        print(json.dumps(shown, indent=2, default=float))
        return 0


@hookimpl
def iqadef_register_commands(register):
    register(TrainRobustCommand)
