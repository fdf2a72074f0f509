"""UAP: one universal perturbation, trained once per metric on a folder of images, added to every image."""

from __future__ import annotations

import hashlib
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import iqadef
from iqadef import (
    Attack,
    ConfigError,
    Metric,
    Param,
    atomic_write_bytes,
    attack_loss,
    cache_dir,
    hookimpl,
    load_checkpoint,
    parse_dataset,
)

#: The amplitudes the benchmark sweeps for its trained attacks (ADI
#: ``metrics/methods/utils/attack_presets.json``, presets -3..9).
BENCHMARK_AMPLITUDES = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.18889,
    0.27778,
    0.36667,
    0.45556,
    0.54444,
    0.63333,
    0.72222,
    0.81111,
    0.9,
)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# -- training ------------------------------------------------------------------------------------
def fit_to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """The reference's preparation of training images: a central ``size`` crop of large images
    (both sides at least ``2*size``), a bilinear resize to ``size x size`` otherwise."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h >= 2 * size and w >= 2 * size:
        top, left = (h - size) // 2, (w - size) // 2
        return images[..., top : top + size, left : left + size]
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(
        0.0, 1.0
    )


def _batches(images_or_loader: Any, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    """One epoch of training batches: a shuffled tensor split in batches, or the loader's items."""
    if isinstance(images_or_loader, torch.Tensor):
        images = images_or_loader if images_or_loader.dim() == 4 else images_or_loader.unsqueeze(0)
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            yield images[order[start : start + batch_size]]
        return
    for item in images_or_loader:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise ConfigError(
                f"train_uap: the loader yields {type(item).__name__}; expected image tensors "
                f"[B, 3, H, W] (or (images, ...) tuples)"
            )
        yield item if item.dim() == 4 else item.unsqueeze(0)


def train_uap(
    metric: Metric,
    images_or_loader: Any,
    *,
    size: int = 256,
    eps: float = 0.1,
    lr: float = 1e-3,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 8,
) -> torch.Tensor:
    """Train a universal perturbation ``[3, size, size]`` (values in [-eps, eps]) against ``metric``.

    As in the reference (``methods/uap/train.py``): the perturbation starts at 1e-4 everywhere;
    each batch is ``clamp(x + uap)`` (the clamp passes gradients straight through), the loss is the
    batch mean of ``1 - f/range``, Adam takes a step, and the perturbation is clipped to +-eps.
    ``images_or_loader`` is a tensor ``[N, 3, H, W]`` (shuffled each epoch with ``seed``) or an
    iterable of image batches such as a DataLoader; images are fitted to ``size`` with
    :func:`fit_to_size`.
    """
    device = metric.device
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.full((1, 3, size, size), 1e-4, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([noise], lr=lr)
    steps = 0
    for _ in range(epochs):
        for batch in _batches(images_or_loader, batch_size, generator):
            batch = fit_to_size(batch.to(device=device, dtype=noise.dtype), size)
            with torch.enable_grad():
                attacked = batch + noise
                attacked = attacked + (attacked.clamp(0.0, 1.0) - attacked).detach()
                loss = attack_loss(metric, attacked).mean()
                (grad,) = torch.autograd.grad(loss, noise)
            noise.grad = torch.nan_to_num(grad)
            optimizer.step()
            with torch.no_grad():
                noise.clamp_(-eps, eps)
            steps += 1
    if steps == 0:
        raise ConfigError("train_uap: no training images were given")
    return noise.detach()[0]


def tile_to(perturbation: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat ``[3, h, w]`` over the image and crop to ``height x width`` (the reference's np.tile)."""
    h, w = perturbation.shape[-2:]
    reps = (1, -(-height // h), -(-width // w))
    return perturbation.repeat(*reps)[:, :height, :width]


# -- image folders -----------------------------------------------------------------------------------
def bundled_images_dir():
    """The package's bundled sample images (a Traversable)."""
    return resources.files("iqadef") / "data" / "images"


def _image_entries(folder: Any) -> list:
    if isinstance(folder, (str, os.PathLike)):
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"uap.train_dir: {folder} is not a folder of images")
    elif not folder.is_dir():
        raise ConfigError(f"uap: the bundled images folder {folder} is missing; pass train_dir or perturbation_path")
    entries = sorted(
        (e for e in folder.iterdir() if Path(e.name).suffix.lower() in _IMAGE_SUFFIXES), key=lambda e: e.name
    )
    if not entries:
        raise ConfigError(f"uap.train_dir: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {folder}")
    return entries


def dataset_files(name: str) -> list[Path]:
    """The image files of a dataset given by name as in the registry's ``dataset:`` (``builtin``,
    ``koniq10k``, ``nips2017``, a folder, ...; docs/datasets.md), for training on it."""

    config = parse_dataset(name, Path.cwd(), iqadef.InstalledPlugins(), where="train_dataset")
    return [entry.path for entry in config.entries()]


def load_folder(folder: Any, size: int) -> torch.Tensor:
    """All images of ``folder`` (or of a list of files) as ``[N, 3, size, size]`` in [0, 1] (see
    :func:`fit_to_size`)."""
    out = []
    for entry in folder if isinstance(folder, list) else _image_entries(folder):
        with Image.open(io.BytesIO(entry.read_bytes())) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        out.append(fit_to_size(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0), size))
    return torch.cat(out)


def folder_fingerprint(folder: Any) -> list:
    """Names and contents' hashes of the images in ``folder`` or a list of files (part of the cache key)."""
    entries = folder if isinstance(folder, list) else _image_entries(folder)
    return [[e.name, hashlib.sha256(e.read_bytes()).hexdigest()[:16]] for e in entries]


# -- perturbation files --------------------------------------------------------------------------------
def load_perturbation(path: str | os.PathLike) -> torch.Tensor:
    """Read a perturbation saved by this plugin (``.pt``) or by the reference code (``.npy``, HxWx3)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"uap.perturbation_path: {path} does not exist")
    if path.suffix.lower() == ".npy":
        data = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    else:
        data = load_checkpoint(path)
        if isinstance(data, dict):
            data = data.get("perturbation", data.get("uap"))
    if not isinstance(data, torch.Tensor):
        raise ConfigError(
            f"uap.perturbation_path: {path} holds no tensor (expected a [3, H, W] tensor or a "
            f"dict with key 'perturbation')"
        )
    data = data.float().squeeze(0) if data.dim() == 4 else data.float()
    if data.dim() == 3 and data.shape[0] != 3 and data.shape[-1] == 3:
        data = data.permute(2, 0, 1)
    if data.dim() != 3 or data.shape[0] != 3:
        raise ConfigError(
            f"uap.perturbation_path: {path} holds a tensor of shape {tuple(data.shape)}; "
            f"expected [3, H, W] (or HxWx3 for .npy)"
        )
    return data.contiguous()


def save_perturbation(perturbation: torch.Tensor, path: Path) -> None:
    """Write a perturbation file (atomically, see :func:`save_tensors`)."""
    save_tensors({"perturbation": perturbation.detach().cpu()}, path)


def save_tensors(state: dict, path: Path) -> None:
    """Write a dict of tensors through the one atomic-write helper (temporary file + rename, the umask's
    mode), so a crash never leaves a half file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class TrainedAttack(Attack):
    """An attack whose preparation is a training run against the metric (UAPs, the FACPA generator).

    The training result (a dict of tensors) is cached by content: its path hashes the metric's
    identity, :meth:`training_recipe`, the training images' names and contents and the plugin's
    version, so a changed parameter or image retrains and anything else reuses it. Training is
    resumable: a trainer may call ``checkpoint(state)`` after each epoch; the state is written next to
    the cache entry (``.partial.pt``) and passed back as ``resume`` when a killed run starts again.
    Subclasses define :meth:`training_recipe` and :meth:`train`.
    """

    #: The subfolder of the cache (default: the plugin's name).
    cache_folder: str = ""
    #: The parameter naming a ready training result (a file), which replaces training.
    result_param: str = ""
    #: Parameters every trained attack declares (their Params are the subclasses').
    train_dir: str | None
    train_dataset: str | None
    size: int

    def __init__(self, where: str | None = None, **values: Any):
        super().__init__(where, **values)
        self._trained: dict[tuple[str, str], dict] = {}
        self._dataset_files: list[Path] | None = None

    def training_recipe(self) -> dict:
        """The parameters that determine the training result (hashed into the cache path)."""
        raise NotImplementedError

    def train(self, metric: Metric, images: torch.Tensor, *, resume: dict | None, checkpoint: Any) -> dict:
        """Train against ``metric`` on ``images`` ``[N, 3, H, W]``; return a dict of tensors."""
        raise NotImplementedError

    def training_source(self) -> Any:
        """The training images: the files of ``train_dataset``, else the folder ``train_dir``, else the
        bundled images."""
        dataset = getattr(self, "train_dataset", None)
        if dataset:
            if self._dataset_files is None:  # scanned once: the identity and the cache path need it too
                self._dataset_files = dataset_files(dataset)
            return self._dataset_files
        return self.train_dir if self.train_dir is not None else bundled_images_dir()

    def weights_in_use(self) -> tuple:
        """The files this attack's output depends on (their content enters :meth:`identity`, so cached
        x_a are not reused after a retraining): the given training result, else the training images."""
        given = self.config.get(self.result_param) if self.result_param else None
        if given:
            return (Path(given).expanduser(),)
        try:
            source = self.training_source()
            return tuple(Path(str(e)) for e in (source if isinstance(source, list) else _image_entries(source)))
        except ConfigError:
            return ()  # reported with its fix when training starts

    def training_images(self) -> torch.Tensor:
        return load_folder(self.training_source(), self.size)

    def cache_path(self, metric: Metric) -> Path:
        """Where the training result for ``metric`` with these parameters is cached."""
        recipe = {
            "metric": metric.identity(),
            **self.training_recipe(),
            "images": folder_fingerprint(self.training_source()),
            "version": self.version,
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cache_dir() / (self.cache_folder or self.name) / f"{metric.name}-{metric.key()}-{digest}.pt"

    def trained_state(self, metric: Metric) -> dict:
        """The training result for ``metric``: from memory, the cache, or trained now (and cached)."""
        memo = (metric.key(), str(metric.device))
        if memo not in self._trained:
            path = self.cache_path(metric)
            if path.is_file():
                state = load_checkpoint(path)
            else:
                partial = path.with_name(path.stem + ".partial.pt")
                resume = load_checkpoint(partial) if partial.is_file() else None
                state = self.train(
                    metric, self.training_images(), resume=resume, checkpoint=lambda s: save_tensors(s, partial)
                )
                save_tensors(state, path)
                partial.unlink(missing_ok=True)
            self._trained[memo] = state
        return self._trained[memo]


class UAP(TrainedAttack):
    """UAP: a universal perturbation (256x256, +-0.1, Adam) trained per metric, tiled and added with an amplitude.

    Reference: ``methods/uap/train.py`` and ``utils/uap_evaluate.py`` of adversarial-defenses-for-iqa /
    MSU_Metrics_Robustness_Benchmark. The perturbation is read from ``perturbation_path`` or trained
    on ``train_dir`` (default: the bundled images) and cached; it is tiled over the image (not
    resized), multiplied by ``amplitude`` and added; the result is clamped to [0, 1]. L-inf bound:
    ``eps * amplitude``. The run seed is not used (the perturbation is universal; ``train_seed``
    fixes the training order).
    """

    name = "uap"
    norm = "linf"
    result_param = "perturbation_path"
    params: ClassVar[tuple[Param, ...]] = (
        Param("amplitude", float, 0.2, help="factor applied to the perturbation", low=0.0, presets=(0.2, 0.4, 0.8)),
        Param(
            "perturbation_path",
            Path,
            None,
            help="a trained perturbation (.pt from this plugin, or the reference's .npy); null = train",
        ),
        Param("train_dir", Path, None, help="folder of training images; null = the bundled images"),
        Param(
            "train_dataset",
            str,
            None,
            help="train on a dataset instead (as the registry's `dataset:`, "
            "e.g. koniq10k, nips2017, builtin); overrides train_dir",
        ),
        Param("eps", float, 0.1, help="L-inf bound of the trained perturbation (before amplitude)", low=0.0),
        Param("size", int, 256, help="side of the trained perturbation", low=1),
        Param("lr", float, 1e-3, help="Adam learning rate", low=0.0),
        Param("epochs", int, 5, help="training epochs", low=1),
        Param("batch_size", int, 8, help="training batch size", low=1),
        Param("train_seed", int, 0, help="seed of the training order"),
    )
    amplitude: float
    perturbation_path: str | None
    train_dir: str | None
    train_dataset: str | None
    eps: float
    size: int
    lr: float
    epochs: int
    batch_size: int
    train_seed: int

    def bound(self) -> float:
        return self.eps * self.amplitude

    def training_recipe(self) -> dict:
        return {
            "size": self.size,
            "eps": self.eps,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.train_seed,
        }

    def train(
        self, metric: Metric, images: torch.Tensor, *, resume: dict | None = None, checkpoint: Any = None
    ) -> dict:
        return {
            "perturbation": train_uap(
                metric,
                images,
                size=self.size,
                eps=self.eps,
                lr=self.lr,
                epochs=self.epochs,
                seed=self.train_seed,
                batch_size=self.batch_size,
            )
        }

    def perturbation(self, metric: Metric) -> torch.Tensor:
        """The perturbation ``[3, h, w]`` for ``metric``: from the given file, the cache, or trained now."""
        if self.perturbation_path is not None:
            uap = load_perturbation(self.perturbation_path)
        else:
            uap = self.trained_state(metric)["perturbation"]
        return uap.float().clamp(-self.eps, self.eps)

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        uap = self.perturbation(metric).to(device=images.device, dtype=images.dtype)
        shift = tile_to(uap, *images.shape[-2:])
        return (images + self.amplitude * shift).clamp(0.0, 1.0).detach()


@hookimpl
def iqadef_register_attacks(register):
    register(UAP)
