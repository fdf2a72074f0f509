"""DiffPure purifier: noise the image a little with a diffusion model's forward process, then denoise it back.

A small adversarial perturbation is drowned by the added Gaussian noise and the reverse (denoising) steps pull
the image back towards natural images. Reference: Nie et al., "Diffusion Models for Adversarial Purification"
(ICML 2022, NVlabs/DiffPure, ``runners/diffpure_guided.py``) as the IQA study runs it
(msu-video-group/adversarial-defenses-for-iqa, ``metrics/defences/diffpure``): the image is resized bilinearly
to 256x256, mapped to [-1, 1], diffused to step ``t`` in one jump
(``x_t = sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1}) e``), denoised by ``t`` ancestral DDPM steps of the ImageNet
256x256 unconditional guided-diffusion model (learned variance, x_0 clipped to [-1, 1]), resized back and clipped.
See docs/defences.md (DiffPure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from iqadef import (
    ConfigError,
    Defence,
    Param,
    WeightsError,
    WeightSpec,
    hookimpl,
    load_checkpoint,
    load_state_dict_strict,
    resolve_weights,
)

from ._guided_diffusion import IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig

GUIDED_256_WEIGHTS = WeightSpec(
    filename="256x256_diffusion_uncond.pt",
    urls=("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",),
    description="guided-diffusion ImageNet 256x256 unconditional DDPM (Dhariwal & Nichol 2021; 553M parameters, "
    "2.2 GB), the model DiffPure uses on ImageNet",
)


@dataclass(frozen=True)
class GuidedModel:
    """A guided-diffusion checkpoint the ``model`` parameter can name: its architecture and weight file.

    All released guided-diffusion DDPMs use the linear schedule of Ho et al. over 1000 steps.
    """

    config: GuidedUNetConfig
    weights: WeightSpec
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


#: Files of a diffusers model folder whose content decides the model's output.
MODEL_FILE_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json"}

#: Names accepted by ``model`` besides diffusers directories / hub ids.
GUIDED_MODELS: dict[str, GuidedModel] = {"guided-256": GuidedModel(IMAGENET_256_UNCOND, GUIDED_256_WEIGHTS)}


class DiffPure(Defence):
    """DiffPure: diffuse to step t (of 1000) and denoise with t reverse DDPM steps (guided-diffusion 256 or diffusers).

    ``model: guided-256`` (default) is the paper's ImageNet 256x256 unconditional guided-diffusion checkpoint;
    any other value is a diffusers DDPM (``UNet2DModel`` + its scheduler): a local directory, or a hub id that is
    already in the local Hugging Face cache (nothing is downloaded). The image is resized to the model's
    resolution and back. Each image draws its noise from its own generator seeded from ``seed``, so the clean and
    the attacked image of a pair get the same noise. Differentiable (back-propagates through all t steps).
    """

    name = "diffpure"
    #: The guided UNet casts its own activations (``self.dtype``, float32 norms): a run-level ``precision``
    #: runs it under torch.autocast; ``fp16: true`` is the reference's own recipe (torso in float16).
    precision_style = "autocast"
    randomized = True
    differentiable = True
    params: ClassVar[tuple[Param, ...]] = (
        Param(
            "t",
            int,
            5,
            low=0,
            high=1000,
            presets=(5, 10, 20, 30, 50),
            help="diffusion step to noise to (of the model's 1000); as many reverse steps follow; 0 = no-op",
        ),
        Param(
            "model",
            str,
            "guided-256",
            help="'guided-256' (ImageNet 256x256 uncond guided-diffusion) or a diffusers DDPM: local directory "
            "or hub id already in the local Hugging Face cache",
        ),
        Param(
            "weights_path",
            Path,
            None,
            help="explicit path of the guided-diffusion checkpoint (256x256_diffusion_uncond.pt)",
        ),
        Param("fp16", bool, False, help="run the UNet in float16 on CUDA (ignored on CPU)"),
    )
    t: int
    model: str
    weights_path: str | None
    fp16: bool
    weights = (GUIDED_256_WEIGHTS,)

    def weights_in_use(self) -> tuple:
        """The guided-diffusion checkpoint, or the weight files of a local diffusers model folder (a hub
        repo id is identified by its name only: pin a revision by downloading it to a folder)."""
        entry = GUIDED_MODELS.get(self.model)
        if entry is not None:
            return (entry.weights,)
        folder = Path(self.model).expanduser()
        if folder.is_dir():
            return tuple(sorted(p for p in folder.rglob("*") if p.suffix in MODEL_FILE_SUFFIXES and p.is_file()))
        return ()

    # -- loading -------------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        half = self.fp16 and device.type == "cuda"
        entry = GUIDED_MODELS.get(self.model)
        if entry is not None:
            self.unet = self._load_guided(entry, half)
            self.scheduler = DDPMScheduler(
                num_train_timesteps=entry.num_train_timesteps,
                beta_schedule="linear",
                beta_start=entry.beta_start,
                beta_end=entry.beta_end,
                variance_type="learned_range",
                clip_sample=True,
                clip_sample_range=1.0,
                prediction_type="epsilon",
            )
            self._backend = "guided"
            self._resolution = (entry.config.image_size, entry.config.image_size)
            self._split_epsilon = False
        else:
            if self.weights_path:
                raise ConfigError(
                    f"{self.name}.weights_path: only used with a guided-diffusion model "
                    f"({', '.join(GUIDED_MODELS)}); for a diffusers model give its directory as `model`"
                )
            self.unet, self.scheduler = self._load_diffusers(self.model)
            self._backend = "diffusers"
            size = self.unet.config.sample_size
            self._resolution = (
                None
                if size is None
                else ((int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1])))
            )
            channels = self.unet.config.in_channels
            learned = self.scheduler.config.variance_type in ("learned", "learned_range")
            # A learned-variance UNet paired with a fixed-variance scheduler: keep only its epsilon half.
            self._split_epsilon = self.unet.config.out_channels == 2 * channels and not learned
            if half:
                self.unet.half()
        steps = self.scheduler.config.num_train_timesteps
        if self.t > steps:
            raise ConfigError(f"{self.name}.t: {self.t} is larger than the model's {steps} diffusion steps")
        self._dtype = torch.float16 if half else torch.float32

    def _load_guided(self, entry: GuidedModel, half: bool) -> GuidedUNet:
        path = resolve_weights(entry.weights, self.weights_path)
        state = load_checkpoint(path)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(
                f"{path}: expected a plain state dict of tensors (as guided-diffusion releases "
                f"{entry.weights.filename}), got {type(state).__name__}"
            )
        with torch.device("meta"):  # no random init of ~550M parameters that the checkpoint overwrites anyway
            unet = GuidedUNet(entry.config)
        unet = unet.to_empty(device="cpu")
        try:
            load_state_dict_strict(unet, state, label=str(path))
        except RuntimeError as exc:  # shape mismatch: another architecture's checkpoint
            raise WeightsError(
                f"{path}: checkpoint does not fit the {self.model} architecture "
                f"({str(exc).splitlines()[-1].strip()}); is it the right file?"
            ) from None
        if half:
            unet.convert_to_fp16()
        return unet

    def _load_diffusers(self, source: str):
        from diffusers import DDPMScheduler, UNet2DModel

        root = _diffusers_directory(source, f"{self.name}.model", sorted(GUIDED_MODELS))
        unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
        if not (unet_dir / "config.json").is_file():
            raise ConfigError(
                f"{self.name}.model: {root} is not a diffusers model directory (no config.json "
                f"and no unet/config.json); save one with UNet2DModel.save_pretrained or a "
                f"DDPMPipeline's save_pretrained"
            )
        try:
            unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{self.name}.model: could not load a diffusers UNet2DModel from {unet_dir}: {str(exc).splitlines()[0]}"
            ) from None
        if unet.config.in_channels != 3:
            raise ConfigError(
                f"{self.name}.model: {unet_dir} has {unet.config.in_channels} input channels; "
                f"DiffPure needs a pixel-space RGB model (3 channels)"
            )
        if unet.config.out_channels not in (3, 6):
            raise ConfigError(
                f"{self.name}.model: {unet_dir} predicts {unet.config.out_channels} channels; "
                f"expected 3 (epsilon) or 6 (epsilon and learned variance)"
            )
        scheduler_dir = next((d for d in (root / "scheduler", root) if (d / "scheduler_config.json").is_file()), None)
        if scheduler_dir is not None:
            scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(scheduler_dir))
        else:  # a bare UNet: the standard DDPM schedule (linear betas, 1000 steps, x_0 clipped)
            learned = unet.config.out_channels == 6
            scheduler = DDPMScheduler(variance_type="learned_range" if learned else "fixed_small")
        return unet, scheduler

    def precision_modules(self) -> list[torch.nn.Module]:
        """The network the run-level ``precision``/``compile``/``channels_last`` apply to."""
        return [self.unet]

    # -- purification ----------------------------------------------------------------------------
    def _predict(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The model output for the noisy batch ``x`` at ``step`` (float32; epsilon [+ variance values])."""
        batch = x.shape[0]
        if self._backend == "guided":
            out = self.unet(x, torch.full((batch,), float(step), device=x.device))
        else:
            timesteps = torch.full((batch,), step, device=x.device, dtype=torch.long)
            out = self.unet(x.to(self._dtype), timesteps).sample
            if self._split_epsilon:
                out = out[:, : x.shape[1]]
        return out.float()

    def _image_generators(self, seed: int | None, batch: int, device: torch.device) -> list[torch.Generator]:
        """One generator per image, seeded from ``seed`` and the image's position in the batch only."""
        root = self.generator(seed, "cpu")  # CPU: image b's seed is the same whatever the batch size
        seeds = torch.randint(0, 2**62, (batch,), generator=root).tolist()
        return [self.generator(s, device) for s in seeds]

    def purify(self, images: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        if self.t == 0:
            return images
        height, width = images.shape[-2:]
        x = images.float()
        if self._resolution is not None and (height, width) != self._resolution:
            x = F.interpolate(x, size=self._resolution, mode="bilinear", align_corners=False)
        generators = self._image_generators(seed, x.shape[0], x.device)
        noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g, device=x.device) for g in generators])
        alpha_bar = self.scheduler.alphas_cumprod[self.t - 1].to(x.device)
        x = alpha_bar.sqrt() * (x * 2 - 1) + (1 - alpha_bar).sqrt() * noise
        for step in reversed(range(self.t)):
            x = self.scheduler.step(self._predict(x, step), step, x, generator=generators).prev_sample
        x = (x + 1) / 2
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x.clamp(0.0, 1.0).to(images.dtype)


def alphas_cumprod(model: str) -> torch.Tensor:
    """The cumulative noise schedule (``alpha_bar_t``, float64, one per training step) of a ``model`` value,
    without loading its network: the linear DDPM schedule of a guided-diffusion checkpoint, or the scheduler
    config of a diffusers folder (the standard linear schedule for a bare UNet)."""
    from diffusers import DDPMScheduler

    entry = GUIDED_MODELS.get(model)
    if entry is not None:
        betas = torch.linspace(entry.beta_start, entry.beta_end, entry.num_train_timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)
    root = _diffusers_directory(model, "model", sorted(GUIDED_MODELS))
    folder = next((d for d in (root / "scheduler", root) if (d / "scheduler_config.json").is_file()), None)
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(folder)) if folder is not None else DDPMScheduler()
    return scheduler.alphas_cumprod.double()


def _diffusers_directory(source: str, where: str, guided_names: list[str]) -> Path:
    """A local directory, or the snapshot of a hub id in the local Hugging Face cache (never downloaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(
            f"{where}: {source} is a file; give the diffusers model directory (holding config.json "
            f"or unet/), or one of {', '.join(guided_names)}"
        )
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (ValueError, OSError):  # HFValidationError (not a repo id), LocalEntryNotFoundError (not cached)
        raise ConfigError(
            f"{where}: {source!r} is neither one of {', '.join(guided_names)}, nor an existing local directory, nor a "
            f"hub id in the local Hugging Face cache ({constants.HF_HUB_CACHE}). iqadef works offline here, so a hub "
            f"id only works once downloaded: run `huggingface-cli download {source}` where there is network (and "
            f"copy the cache), or give the local directory of the model"
        ) from None


@hookimpl
def iqadef_register_defences(register):
    register(DiffPure)
