"""pyiqa's checkpoint files through iqadef's weights rules.

pyiqa fetches each file it needs with ``pyiqa.utils.download_util.load_file_from_url(url)`` into
``<torch hub dir>/pyiqa`` (its ``DEFAULT_CACHE_DIR``), with no checksum, and loads most of them with
``torch.load(weights_only=False)``. While the adapter builds a metric, that function (as every pyiqa
module imported it) resolves the file the iqadef way instead: ``$IQADEF_WEIGHTS_DIR/<file>``, then
iqadef's cache, then a verified download unless ``IQADEF_OFFLINE=1`` (:mod:`iqadef.core.weights`).
A torch checkpoint is then opened once with ``weights_only=True``: a file holding code is refused before
pyiqa's own loader sees it. pyiqa's other cache uses (``DEFAULT_CACHE_DIR`` in TOPIQ and LIQE) point at
``<iqadef cache>/pyiqa``. Backbones that pyiqa takes from torchvision (``<torch hub>/checkpoints``), timm
or Hugging Face (the HF cache) are found where those libraries look; but whoever opens a checkpoint while
a metric is built (torchvision's ``load_state_dict_from_url`` passes ``weights_only=False``), ``torch.load``
is iqadef's weights-only load (:func:`weights_only_load`): a file holding code is refused, never run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from iqadef import WeightsError
from iqadef import WeightSpec, cache_dir, load_checkpoint, resolve_weights
from iqadef import numpy_safe_globals

#: Extensions pyiqa reads with torch.load.
TORCH_FILES = (".pth", ".pt", ".pkl", ".ckpt", ".bin", ".tar")

_LOCK = threading.RLock()
_TORCH_LOAD = torch.load  # the real one, whatever routed() puts in its place
_INSIDE = threading.local()


def weights_only_load(f, map_location=None, *args, **kwargs):
    """``torch.load`` while a metric is built: always ``weights_only=True`` (numpy numbers and arrays
    allowed), whatever the caller asked for; a path goes through :func:`iqadef.core.weights.load_checkpoint`
    (its clear errors). Other arguments (``pickle_module``, ``mmap``, ``weights_only``) are ignored."""
    if getattr(_INSIDE, "active", False):  # load_checkpoint's own torch.load call
        return _TORCH_LOAD(f, map_location, *args, **kwargs)
    _INSIDE.active = True
    try:
        if isinstance(f, (str, os.PathLike)):
            return load_checkpoint(f, "cpu" if map_location is None else map_location, allow_numpy=True)
        name = getattr(f, "name", "a checkpoint stream")
        try:
            with torch.serialization.safe_globals(numpy_safe_globals()):
                return _TORCH_LOAD(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise WeightsError(f"{name}: refused to load: the checkpoint holds objects other than tensors, numbers "
                               f"and plain containers (loaded with weights_only=True, so nothing in it was run); "
                               f"details: {first}") from None
    finally:
        _INSIDE.active = False


def spec_for(url: str, file_name: str | None = None, description: str = "") -> WeightSpec:
    """The iqadef spec of a file pyiqa downloads: pyiqa's own file name, pyiqa's URL, no pinned sha256
    (pyiqa publishes none)."""
    filename = file_name or os.path.basename(urlparse(url).path)
    return WeightSpec(filename=filename, urls=(url,), sha256=None, description=description or f"pyiqa file {url}")


def pyiqa_cache_dir() -> Path:
    """Where pyiqa's other caches go while the adapter builds a metric (``<iqadef cache>/pyiqa``)."""
    return cache_dir() / "pyiqa"


def resolve(url: str, model_dir: str | None = None, progress: bool = True, file_name: str | None = None) -> str:
    """Stand-in for pyiqa's ``load_file_from_url`` (same signature): the local path of the file, found or
    downloaded by iqadef's rules (``model_dir`` is ignored: iqadef decides where files live)."""
    spec = spec_for(url, file_name)
    path = resolve_weights(spec, progress=progress)
    if path.suffix.lower() in TORCH_FILES:
        load_checkpoint(path, allow_numpy=True)  # weights_only=True: refuses a pickle that would run code
    return str(path)


def _pyiqa_modules() -> list:
    return [m for name, m in list(sys.modules.items()) if m is not None and (name == "pyiqa" or name.startswith("pyiqa."))]


@contextlib.contextmanager
def routed(loader=resolve):
    """While inside, every pyiqa module's ``load_file_from_url`` is ``loader``, its ``DEFAULT_CACHE_DIR``
    is :func:`pyiqa_cache_dir` and ``torch.load`` is :func:`weights_only_load` (for every loader: pyiqa,
    torchvision, timm, Hugging Face); all are put back on exit."""
    import pyiqa  # noqa: F401  (imports every architecture module, so all their references are seen)
    from pyiqa.utils import download_util

    original = download_util.load_file_from_url
    folder = str(pyiqa_cache_dir())
    with _LOCK:
        saved = []
        for module in _pyiqa_modules():
            for attr, value in (("load_file_from_url", loader), ("DEFAULT_CACHE_DIR", folder)):
                current = module.__dict__.get(attr, None)
                if attr in module.__dict__ and (attr != "load_file_from_url" or current is original):
                    saved.append((module, attr, current))
                    setattr(module, attr, value)
        saved.append((torch, "load", torch.load))
        torch.load = weights_only_load
        try:
            yield
        finally:
            for module, attr, value in reversed(saved):
                setattr(module, attr, value)
