"""pyiqa's checkpoint files through iqadef's weights rules.

pyiqa fetches each file it needs with ``pyiqa.utils.download_util.load_file_from_url(url)`` into
``<torch hub dir>/pyiqa`` (its ``DEFAULT_CACHE_DIR``), with no checksum, and loads most of them with
``torch.load(weights_only=False)``. While the adapter builds a metric, that function (as every pyiqa
module imported it) resolves the file the iqadef way instead: ``$IQADEF_WEIGHTS_DIR/<file>``, then
iqadef's cache, then a verified download unless ``IQADEF_OFFLINE=1`` (:mod:`iqadef.core.weights`).
A torch checkpoint is then opened once with ``weights_only=True``: a file holding code is refused before
pyiqa's own loader sees it. pyiqa's other cache uses (``DEFAULT_CACHE_DIR`` in TOPIQ and LIQE) point at
``<iqadef cache>/pyiqa``. Backbones that pyiqa takes from torchvision (``<torch hub>/checkpoints``), timm
or Hugging Face (the HF cache) are not pyiqa's files: they follow those libraries' rules.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from iqadef.core.weights import WeightSpec, cache_dir, load_checkpoint, resolve_weights

#: Extensions pyiqa reads with torch.load.
TORCH_FILES = (".pth", ".pt", ".pkl", ".ckpt", ".bin", ".tar")

_LOCK = threading.RLock()


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
    """While inside, every pyiqa module's ``load_file_from_url`` is ``loader`` and its ``DEFAULT_CACHE_DIR``
    is :func:`pyiqa_cache_dir`; both are put back on exit."""
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
        try:
            yield
        finally:
            for module, attr, value in reversed(saved):
                setattr(module, attr, value)
