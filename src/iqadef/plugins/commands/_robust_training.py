"""The maths of ``iqadef train-robust``: adversarial training with score correction (Chistyakova et al. 2024,
code ``wianluna/metrics_at``), its "free" variant (Shafahi et al. 2019) and gradient-norm regularisation
"NT" (Liu et al., CVPR 2024, code ``YangiD/DefenseIQA-NT``), for any differentiable metric.

Each step function takes a score function ``f(images) -> [B]`` (the metric being fine-tuned) and returns the
loss to minimise; the loop in :func:`train_robust` does the optimiser, the schedule, the data and the
per-epoch resume state. docs/fidelity.md lists where this differs from the reference code.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import kornia
import torch
import torch.nn.functional as F

from iqadef import IqadefError, atomic_write_bytes, load_checkpoint

Score = Callable[[torch.Tensor], torch.Tensor]

#: metrics_at presets/train.yaml: FGSM eps 4, alpha 5 (in /255), mode zero, label_strategy ssim, penalty 1.
AT_EPS = 4.0
AT_STEP_RATIO = 5.0 / 4.0
#: DefenseIQA-NT train_test_IQA_sparsity.py: --weight 1e-3, --h 1e-2.
NT_WEIGHT = 1e-3
NT_H = 1e-2


# -- losses (metric_at/loss.py) ----------------------------------------------------------------------------
def norm_in_norm_loss(pred: torch.Tensor, target: torch.Tensor, p: float = 1.0, q: float = 2.0) -> torch.Tensor:
    """Norm-in-norm loss (Li et al. 2020), the ``alpha = [1, 0]`` term metrics_at's preset uses: both vectors
    centred and divided by their q-norm, then ``(||pred - target||_p / scale) ** p`` with
    ``scale = 2 ** max(1, 1/q) * B ** max(0, 1/p - 1/q)``. 0 for a batch of one (as the reference)."""
    pred, target = pred.reshape(-1, 1), target.reshape(-1, 1).to(pred)
    batch = pred.shape[0]
    if batch < 2:
        return F.l1_loss(pred, pred.detach())
    pred = pred - pred.mean()
    pred = pred / (1e-8 + torch.norm(pred, p=q))
    target = target - target.mean()
    target = target / (1e-8 + torch.norm(target, p=q))
    scale = 2.0 ** max(1.0, 1.0 / q) * batch ** max(0.0, 1.0 / p - 1.0 / q)
    err = pred - target
    if p < 1:
        err = err + 1e-8
    return (torch.norm(err, p=p) / scale) ** p


def monotonicity_regularization(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """metric_at/loss.py's ranking term: mean of ``relu((p_i - p_j) * sign(y_j - y_i))`` over ordered pairs,
    divided by ``1 + max``. Off in the preset (``monotonicity_regularization: no``); ``--gamma`` turns it on."""
    pred, target = pred.reshape(-1, 1), target.reshape(-1, 1).to(pred)
    batch = pred.shape[0]
    if batch < 2:
        return F.l1_loss(pred, pred.detach())
    ranking = F.relu((pred - pred.t()) * torch.sign(target.t() - target))
    return ranking.sum() / batch / (batch - 1) / (1 + ranking.max())


def iqa_loss(pred: torch.Tensor, target: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """The training loss of metrics_at's preset for a one-output metric: norm-in-norm (p 1, q 2), plus
    ``gamma`` * monotonicity regularisation when ``gamma > 0``."""
    loss = norm_in_norm_loss(pred, target)
    if gamma > 0:
        loss = loss + gamma * monotonicity_regularization(pred, target)
    return loss


# -- the attack that makes training examples (metric_at/attacks/fgsm.py) -----------------------------------
def fgsm_examples(
    score: Score,
    images: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    step: float,
    init: str = "zero",
    generator: torch.Generator | None = None,
    gamma: float = 0.0,
    objective: str = "loss",
    direction: float = 1.0,
) -> torch.Tensor:
    """One signed step from ``x + noise`` (zero, or uniform in [-eps, eps] for ``init="uniform"``, metrics_at's
    "free" mode): ``step * sign(grad)``, clamped to ``noise-start +- eps`` and to [0, 1]. ``objective="loss"``
    (the reference) raises the training loss against the targets; ``"score"`` moves the score in its "better"
    ``direction`` (+1 higher is better), the attacks' goal, needed for self-distillation, where the loss is
    exactly 0 at the start (targets = the metric's own scores) and has no gradient."""
    if init == "uniform":
        noise = (torch.rand(images.shape, generator=generator, device="cpu").to(images) * 2 - 1) * eps
    elif init == "zero":
        noise = torch.zeros_like(images)
    else:
        raise IqadefError(f"--init {init!r}: use zero or uniform")
    start = (images + noise).detach().requires_grad_(True)
    if objective == "loss":
        loss = iqa_loss(score(start), target, gamma)
    elif objective == "score":
        loss = direction * score(start).sum()
    else:
        raise IqadefError(f"--attack-objective {objective!r}: use loss or score")
    (grad,) = torch.autograd.grad(loss, [start])
    adv = start.detach() + step * grad.sign()
    return torch.min(torch.max(adv, start.detach() - eps), start.detach() + eps).clamp(0.0, 1.0)


# -- score correction (metric_at/trainer.py, label_strategy "ssim") --------------------------------------
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def ssim_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM as ``pytorch_msssim.ssim(a, b, data_range=1, size_average=False)``, metrics_at's dependency: an
    11x11 Gaussian window (sigma 1.5), no padding, K = (0.01, 0.03), averaged over pixels and channels.
    (The SSIM elsewhere in iqadef clips the contrast term at 0, IQA_pytorch's way; this one does not.)"""
    kernel = kornia.filters.get_gaussian_kernel2d((SSIM_WINDOW, SSIM_WINDOW), (SSIM_SIGMA, SSIM_SIGMA)).to(a)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return kornia.filters.filter2d(t, kernel, padding="valid")

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).flatten(2).mean(-1).mean(-1)


def corrected_targets(
    target: torch.Tensor,
    clean: torch.Tensor,
    adversarial: torch.Tensor,
    *,
    low: float,
    high: float,
    penalty: float = 1.0,
    correction: str = "ssim",
) -> torch.Tensor:
    """The adversarial examples' targets: ``clamp(y - penalty * (1 - SSIM(x_adv, x)) * (high - low), low, high)``
    (metrics_at's ``label_strategy: ssim``; ``none`` keeps ``y``)."""
    if correction == "none":
        return target.clone()
    if correction != "ssim":
        raise IqadefError(f"--correction {correction!r}: use ssim or none")
    similarity = ssim_per_image(adversarial.detach(), clean.detach()).to(target)
    return (target - penalty * (1 - similarity) * (high - low)).clamp(low, high)


def at_loss(
    score: Score,
    images: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    step: float,
    low: float,
    high: float,
    init: str = "zero",
    penalty: float = 1.0,
    correction: str = "ssim",
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
    objective: str = "loss",
    direction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AT step's loss (metric_at/trainer.py ``_train_step``): the FGSM examples, their corrected targets,
    the batch ``[adversarial, clean]`` and the loss on it. Returns ``(loss, adversarial images, their targets)``."""
    adversarial = fgsm_examples(
        score,
        images,
        target,
        eps=eps,
        step=step,
        init=init,
        generator=generator,
        gamma=gamma,
        objective=objective,
        direction=direction,
    )
    adv_target = corrected_targets(
        target, images, adversarial, low=low, high=high, penalty=penalty, correction=correction
    )
    batch = torch.cat([adversarial, images])
    return iqa_loss(score(batch), torch.cat([adv_target, target]), gamma), adversarial, adv_target


# -- NT (YangiD/DefenseIQA-NT, HyperIQASolver.loss_grad) ---------------------------------------------------
def nt_penalty(score: Score, images: torch.Tensor, h: float = NT_H) -> torch.Tensor:
    """``mean(((f(x + h * sign(grad f(x))) - f(x)) / h) ** 2) / 2``: the finite difference along the gradient's
    sign is the directional derivative ``<grad f, sign grad f> = ||grad f(x)||_1`` (the dual norm of the
    L-inf threat), so this is about ``||grad f||_1 ** 2 / 2`` per image, without double backpropagation."""
    x = images.detach().requires_grad_(True)
    current = score(x)
    (grad,) = torch.autograd.grad(current.sum(), [x], retain_graph=True)
    direction = grad.sign().detach()
    perturbed = score(x.detach() + h * direction)
    return ((perturbed - current) / h).pow(2).mean() / 2


def nt_loss(
    score: Score, images: torch.Tensor, target: torch.Tensor, *, weight: float = NT_WEIGHT, h: float = NT_H
) -> tuple[torch.Tensor, torch.Tensor]:
    """NT's loss: L1 to the targets (HyperIQA's own loss in the reference) + ``weight`` * :func:`nt_penalty`.
    Returns ``(loss, penalty)``."""
    task = F.l1_loss(score(images), target.to(images))
    penalty = nt_penalty(score, images, h)
    return task + weight * penalty, penalty.detach()


# -- training ----------------------------------------------------------------------------------------------
@dataclass
class RobustConfig:
    """Everything that decides the result (the resume state must match it)."""

    method: str = "at"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    eps: float = AT_EPS / 255
    step: float | None = None
    init: str = "zero"
    replays: int = 4
    penalty: float = 1.0
    correction: str = "ssim"
    gamma: float = 0.0
    nt_weight: float = NT_WEIGHT
    nt_h: float = NT_H
    crop: int = 224
    crops_per_image: int = 1
    freeze_bn: bool = False
    seed: int = 0
    fit_mapping: bool | None = None
    #: what the training attack raises: "loss" (metrics_at) or "score"; None: loss with MOS, score without
    attack_objective: str | None = None
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "RobustConfig":
        """Method defaults: metrics_at's for at/free-at (Adam 1e-3 head / 1e-4 features: one lr of 1e-4 here,
        no weight decay, a final linear mapping fitted on the training set), DefenseIQA-NT's for nt (2e-5
        backbone lr, weight decay 5e-4, no mapping)."""
        if self.method not in ("at", "free-at", "nt"):
            raise IqadefError(f"--method {self.method!r}: use at, free-at or nt")
        out = RobustConfig(**asdict(self))
        if out.epochs is None:
            out.epochs = 16 if out.method == "nt" else 30  # DefenseIQA-NT --epochs; metrics_at train.epochs
        if out.batch_size is None:
            out.batch_size = 16 if out.method == "nt" else 32  # DefenseIQA-NT --batch_size; metrics_at batch_size
        if out.lr is None:
            out.lr = 2e-5 if out.method == "nt" else 1e-4
        if out.weight_decay is None:
            out.weight_decay = 5e-4 if out.method == "nt" else 0.0
        if out.step is None:
            out.step = out.eps * AT_STEP_RATIO if out.method == "at" else out.eps
        if out.fit_mapping is None:
            out.fit_mapping = out.method != "nt"
        for name in ("epochs", "batch_size", "replays", "crop", "crops_per_image"):
            if getattr(out, name) < 1:
                raise IqadefError(f"--{name.replace('_', '-')} {getattr(out, name)}: must be >= 1")
        if not out.eps > 0:
            raise IqadefError(f"--eps {out.eps * 255:g}: must be > 0 (in /255 units, e.g. 4)")
        return out


def step_schedule(method: str, epochs: int, epoch: int) -> float:
    """The lr factor of an epoch. at/free-at: metrics_at's ``step`` scheduler (lr_decay 0.1, overall 0.01:
    x0.1 every ``epochs / 3`` epochs); nt: DefenseIQA-NT's ``lr / 10 ** (t // 6)``."""
    if method == "nt":
        return 0.1 ** (epoch // 6)
    size = max(1, int(epochs / (1 + math.log(0.01) / math.log(0.1))))
    return 0.1 ** (epoch // size)


def sample_crops(
    images: Sequence[torch.Tensor], crop: int, per_image: int, generator: torch.Generator
) -> tuple[torch.Tensor, list[int]]:
    """``per_image`` random ``crop`` x ``crop`` crops of each image (an image smaller than the crop is resized
    up first), and the index of the image each came from."""
    out, owners = [], []
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        if min(h, w) < crop:
            scale = crop / min(h, w)
            img = F.interpolate(
                img[None],
                size=(max(crop, round(h * scale)), max(crop, round(w * scale))),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0].clamp(0, 1)
            h, w = img.shape[-2:]
        for _ in range(per_image):
            top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
            out.append(img[:, top : top + crop, left : left + crop])
            owners.append(i)
    return torch.stack(out), owners


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class Progress:
    """One line per epoch with the ETA (``\\r``-updated per batch on a terminal, plain lines otherwise)."""

    def __init__(self, total_epochs: int, first_epoch: int, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.first, self.start = total_epochs, first_epoch, time.monotonic()

    def update(self, epoch: int, batch: int, batches: int, loss: float, *, end: bool = False) -> None:
        done = (epoch - self.first) + (batch / max(batches, 1))
        elapsed = time.monotonic() - self.start
        left = self.total - self.first - done
        eta = elapsed / done * left if done > 0 else float("nan")
        text = (
            f"train-robust: epoch {epoch + 1}/{self.total} batch {batch}/{batches} loss {loss:.4f} "
            f"elapsed {elapsed:.0f}s ETA {eta:.0f}s"
        )
        if self.tty:
            self.stream.write("\r" + text + ("\n" if end else ""))
            self.stream.flush()
        elif end:
            print(text, file=self.stream, flush=True)


def trainable_modules(metric) -> list[torch.nn.Module]:
    modules = metric.precision_modules() or metric._modules()
    if not modules:
        raise IqadefError(f"train-robust: metric {metric.label!r} has no torch network to fine-tune")
    return modules


def set_training(modules: Sequence[torch.nn.Module], training: bool, freeze_bn: bool = False) -> None:
    """metrics_at and DefenseIQA-NT train in ``train()`` mode (batch-norm batch statistics, running stats
    updated, the attack included); ``freeze_bn`` keeps batch norm in eval mode (iqadef's option)."""
    for module in modules:
        module.train(training)
        module.requires_grad_(training)
        if training and freeze_bn:
            for sub in module.modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    sub.eval()


def _states(modules: Sequence[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in modules]


def resume_path(out: Path) -> Path:
    return Path(str(out) + ".resume")


def _save_atomic(path: Path, payload: dict[str, Any]) -> None:

    buf = io.BytesIO()
    torch.save(payload, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def train_robust(
    metric,
    reference,
    images: Sequence[torch.Tensor],
    mos: Sequence[float] | None,
    config: RobustConfig,
    *,
    out: Path,
    fingerprint: str,
    device: torch.device | str = "cpu",
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Fine-tune ``metric`` (loaded) in place on ``images``; ``reference`` (the original metric, loaded) gives
    the targets when ``mos`` is None (self-distillation). After each epoch the state goes atomically to
    ``out.resume``; a call with the same ``fingerprint`` continues from it. Returns the training summary
    (losses per epoch, the mapping fitted) once all epochs are done (``stop_after_epoch`` stops early, for tests).
    """
    device = torch.device(device)
    config = config.resolved()
    modules = trainable_modules(metric)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    first = 0
    free_delta: torch.Tensor | None = None  # free-at's perturbation, carried across minibatches and epochs
    state_file = resume_path(out)
    if state_file.is_file():
        saved = load_checkpoint(state_file)
        if saved.get("fingerprint") != fingerprint:
            raise IqadefError(
                f"{state_file}: an interrupted training with other arguments or data; delete it to "
                f"start afresh, or rerun with the arguments it was started with"
            )
        for module, state in zip(modules, saved["modules"]):
            module.load_state_dict(state)
        opt.load_state_dict(saved["optimizer"])
        history, first = list(saved["history"]), int(saved["epoch"])
        free_delta = saved.get("free_delta")
    if mos is not None:
        mos_t = torch.tensor(list(mos), dtype=torch.float32)
        low, high = float(mos_t.min()), float(mos_t.max())
    else:
        low, high = (float(v) for v in metric.range)
    score = metric.score
    objective = config.attack_objective or ("loss" if mos is not None else "score")
    direction = 1.0 if metric.higher_is_better else -1.0
    bar = Progress(config.epochs, first) if progress else None
    for epoch in range(first, config.epochs):
        gen = _epoch_generator(config.seed, epoch)
        for group in opt.param_groups:
            group["lr"] = config.lr * step_schedule(config.method, config.epochs, epoch)
        crops, owners = sample_crops(images, config.crop, config.crops_per_image, gen)
        with torch.no_grad():
            if mos is None:
                targets = torch.cat(
                    [
                        reference.score(crops[i : i + config.batch_size].to(device)).float().cpu()
                        for i in range(0, len(crops), config.batch_size)
                    ]
                )
            else:
                targets = mos_t[owners]
        order = torch.randperm(len(crops), generator=gen)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        totals = {"loss": 0.0, "extra": 0.0}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and other in-network randomness
            set_training(modules, True, config.freeze_bn)
            for b, idx in enumerate(batches):
                x, y = crops[idx].to(device), targets[idx].to(device)
                if config.method == "at":
                    opt.zero_grad(set_to_none=True)
                    loss, _, adv_target = at_loss(
                        score,
                        x,
                        y,
                        eps=config.eps,
                        step=config.step,
                        low=low,
                        high=high,
                        init=config.init,
                        penalty=config.penalty,
                        correction=config.correction,
                        gamma=config.gamma,
                        generator=gen,
                        objective=objective,
                        direction=direction,
                    )
                    loss.backward()
                    opt.step()
                    extra = float((y - adv_target).mean())
                elif config.method == "free-at":
                    loss, extra, free_delta = _free_at_minibatch(
                        score, opt, x, y, config, low, high, objective, direction, free_delta
                    )
                else:
                    opt.zero_grad(set_to_none=True)
                    loss, penalty = nt_loss(score, x, y, weight=config.nt_weight, h=config.nt_h)
                    loss.backward()
                    opt.step()
                    extra = float(penalty)
                totals["loss"] += float(loss.detach()) * len(idx)
                totals["extra"] += extra * len(idx)
                if bar:
                    bar.update(epoch, b + 1, len(batches), float(loss.detach()))
            set_training(modules, False)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": totals["loss"] / len(crops),
                ("nt_penalty" if config.method == "nt" else "target_drop"): totals["extra"] / len(crops),
            }
        )
        if bar:
            bar.update(epoch, len(batches), len(batches), history[-1]["loss"], end=True)
        _save_atomic(
            state_file,
            {
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "history": history,
                "modules": _states(modules),
                "optimizer": opt.state_dict(),
                **({"free_delta": free_delta.cpu()} if free_delta is not None else {}),
            },
        )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            return {"stopped_after_epoch": epoch + 1, "history": history}
    mapping = fit_mapping(metric, reference, images, mos, config, device) if config.fit_mapping else (1.0, 0.0)
    return {"history": history, "mapping": mapping, "low": low, "high": high, "config": asdict(config)}


def _free_at_minibatch(
    score: Score,
    opt,
    x: torch.Tensor,
    y: torch.Tensor,
    config: RobustConfig,
    low: float,
    high: float,
    objective: str = "loss",
    direction: float = 1.0,
    delta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Free AT (Shafahi et al. 2019, Alg. 1): the minibatch replayed ``replays`` times; each replay's one
    backward pass gives the weights' gradient *and* the input gradient that updates the perturbation
    (``delta += step * sign(grad)``, clipped to the eps-ball). Targets and batch as in :func:`at_loss`. With
    ``objective="score"`` the perturbation follows the gradient of the score instead (one more backward
    through the adversarial half: the training loss has no gradient under self-distillation at the start).
    ``delta`` is the perturbation carried over from the previous minibatch (Alg. 1 initialises it once, to 0);
    returns ``(loss, mean target drop, delta)``."""
    if delta is None or delta.shape[1:] != x.shape[1:]:
        delta = torch.zeros_like(x)
    elif len(delta) < len(x):  # after a short last batch: the missing images start from zero
        delta = torch.cat([delta.to(x), torch.zeros_like(x[len(delta) :])])
    delta = delta[: len(x)].to(x)
    loss = torch.zeros(())
    gaps = 0.0
    for _ in range(config.replays):
        adversarial = (x + delta).clamp(0, 1).requires_grad_(True)
        adv_target = corrected_targets(
            y, x, adversarial, low=low, high=high, penalty=config.penalty, correction=config.correction
        )
        opt.zero_grad(set_to_none=True)
        scores = score(torch.cat([adversarial, x]))
        loss = iqa_loss(scores, torch.cat([adv_target, y]), config.gamma)
        if objective == "score":
            (input_grad,) = torch.autograd.grad(direction * scores[: len(x)].sum(), [adversarial], retain_graph=True)
            loss.backward()
        else:
            loss.backward()
            input_grad = adversarial.grad
        opt.step()
        delta = (delta + config.step * input_grad.detach().sign()).clamp(-config.eps, config.eps)
        gaps += float((y - adv_target).mean())
    return loss.detach(), gaps / config.replays, delta.detach()


def fit_mapping(metric, reference, images, mos, config: RobustConfig, device) -> tuple[float, float]:
    """metrics_at's last step: a linear map ``k * pred + b`` fitted (least squares) to the training targets
    on the clean training data, so the fine-tuned metric reports on the targets' scale (norm-in-norm leaves
    scale and offset free). Crops drawn with their own seed, the metric in eval mode."""
    gen = torch.Generator().manual_seed(config.seed * 100_003 - 1)
    crops, owners = sample_crops(images, config.crop, config.crops_per_image, gen)
    with torch.no_grad():
        chunks = [crops[i : i + config.batch_size].to(device) for i in range(0, len(crops), config.batch_size)]
        pred = torch.cat([metric.score(c).float().cpu() for c in chunks]).double()
        target = (
            torch.cat([reference.score(c).float().cpu() for c in chunks])
            if mos is None
            else torch.tensor(list(mos), dtype=torch.float32)[owners]
        ).double()
    if len(pred) < 2 or float(pred.std()) == 0:
        return 1.0, 0.0
    design = torch.stack([pred, torch.ones_like(pred)], 1)
    k, b = torch.linalg.lstsq(design, target[:, None]).solution.flatten().tolist()
    return float(k), float(b)


# -- the checkpoint, in the metric's own layout -------------------------------------------------------------
def fold_mapping(metric, k: float, b: float, probe: torch.Tensor) -> bool:
    """Put ``score -> k * score + b`` into the metric's last ``Linear(., 1)`` when the score is affine in that
    layer's output (checked on ``probe``: tiny-iqa, SPAQ); False (nothing changed) otherwise."""
    if (k, b) == (1.0, 0.0):
        return True
    layers = [
        m
        for module in trainable_modules(metric)
        for m in module.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == 1 and m.bias is not None
    ]
    if not layers:
        return False
    last = layers[-1]
    with torch.no_grad():
        w0, c0 = last.weight.clone(), last.bias.clone()
        before = metric.score(probe).double()
        # score = a * z + c, z the layer's output: a from a unit shift of the bias, c with the layer zeroed
        last.bias.add_(1.0)
        slope = metric.score(probe).double() - before
        last.weight.zero_()
        last.bias.zero_()
        at_zero = metric.score(probe).double()
        a, c = float(slope.mean()), float(at_zero.mean())
        affine = (
            abs(a) > 1e-12
            and torch.allclose(slope, torch.full_like(slope, a), rtol=1e-4, atol=1e-6)
            and torch.allclose(at_zero, torch.full_like(at_zero, c), rtol=1e-4, atol=1e-6)
        )
        # z -> k z + d gives k * score + (1 - k) c + a d; d = (b + (k - 1) c) / a makes it k * score + b
        last.weight.copy_(w0 * k if affine else w0)
        last.bias.copy_(c0 * k + (b + (k - 1) * c) / a if affine else c0)
        if not affine:
            return False
        after = metric.score(probe).double()
        if not torch.allclose(after, k * before + b, rtol=1e-4, atol=1e-3):
            last.weight.copy_(w0)
            last.bias.copy_(c0)
            return False
    return True


def checkpoint_for(metric, mapping: tuple[float, float], probe: torch.Tensor) -> tuple[Any, bool]:
    """The file ``metric`` loads with ``weights_path`` (its own layout) and whether the mapping is inside it.

    linearity: ``{'model', 'k', 'b'}`` (the mapping composed with the checkpoint's k, b); spaq:
    ``{'state_dict'}``; tiny-iqa, metaiqa and a one-network plugin: the plain state dict. A plugin metric
    can define ``trained_checkpoint(mapping)`` to write its own layout."""
    k, b = mapping
    if hasattr(metric, "trained_checkpoint"):
        return metric.trained_checkpoint(mapping), True
    modules = trainable_modules(metric)
    if len(modules) != 1:
        raise IqadefError(
            f"train-robust: metric {metric.label!r} has {len(modules)} networks; give it a "
            f"`trained_checkpoint(mapping)` method that writes the layout its weights_path loads"
        )
    if metric.name == "linearity":
        state = _states(modules)[0]
        return {"model": state, "k": [k * metric.k] * 3, "b": [k * metric.b + b] * 3}, True
    folded = fold_mapping(metric, k, b, probe)
    state = _states(modules)[0]
    if metric.name == "spaq":
        return {"state_dict": state}, folded
    return state, folded


def summary_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, default=float)
