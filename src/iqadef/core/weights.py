"""Model weights: where a plugin's checkpoint is looked for, how it is downloaded and verified.

A :class:`WeightSpec` names a file, the URL(s) it comes from and (optionally) its sha256. A file is
resolved from, in order:

1. an explicit path (the plugin's ``weights_path:`` parameter),
2. ``$IQADEF_WEIGHTS_DIR/<filename>`` (an offline folder you fill by hand),
3. the cache, ``<torch hub dir>/iqadef/<filename>`` (``$TORCH_HOME`` moves it),

else it is downloaded (progress bar; :mod:`iqadef.core.fetch`, shared with the datasets) to a ``.part``
file in the cache, verified, and renamed into place, so an interrupted download never leaves a half file
under the real name, and the next attempt resumes it (HTTP ``Range``). ``IQADEF_OFFLINE=1``
forbids downloads. Checkpoints are always read with ``torch.load(..., weights_only=True)``; a few
old checkpoints also hold numpy numbers, which :func:`load_checkpoint` accepts with ``allow_numpy=True``
by allow-listing the numeric numpy types only (never arbitrary classes or functions).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import pickle
import shutil
import time
import urllib.error
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iqadef.core.errors import ConfigError, IqadefError, WeightsError
from iqadef.core.fetch import FetchError, offline
from iqadef.core.fetch import download as _download
from iqadef.core.fetch import sha256_of as sha256_of
from iqadef.core.files import atomic_write_bytes
from iqadef.core.sniff import binary_kind, looks_like_text, looks_like_web_page


@dataclass(frozen=True)
class WeightSpec:
    """A weight file a plugin needs: its file name, where to download it, and its sha256 (if pinned).

    ``sha256`` may be a prefix of at least 8 hex digits: torchvision-style file names carry one
    (``vgg16-397923af.pth``), which is all the integrity information some releases publish.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    description: str = ""
    #: The plugin parameter that gives an explicit path for this file.
    param: str = "weights_path"
    #: The file's size in bytes, when the plugin knows it (``iqadef weights`` shows it for missing files).
    size: int | None = None
    #: The authors' own copies that only a person can download (Google Drive folders, Baidu with a code):
    #: shown by ``iqadef weights`` and in the missing-file error, never fetched.
    mirrors: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """For ``iqadef weights``: ``size`` is the present file's, else the declared one (None: unknown)."""
        found = find_weights(self)
        return {
            "filename": self.filename,
            "urls": list(self.urls),
            "mirrors": list(self.mirrors),
            "sha256": self.sha256,
            "description": self.description,
            "expected_at": [str(p) for p in candidate_paths(self)],
            "present": str(found) if found else None,
            "size": found.stat().st_size if found else self.size,
        }


def cache_dir() -> Path:
    """``<torch hub dir>/iqadef`` (``$TORCH_HOME/hub/iqadef``; ``~/.cache/torch/hub/iqadef`` by default)."""
    return Path(torch.hub.get_dir()) / "iqadef"


def candidate_paths(spec: WeightSpec) -> list[Path]:
    """Where ``spec`` is looked for, in order (explicit paths aside)."""
    paths = []
    if os.environ.get("IQADEF_WEIGHTS_DIR"):
        folder = Path(os.environ["IQADEF_WEIGHTS_DIR"]).expanduser()
        if folder.exists() and not folder.is_dir():
            raise WeightsError(
                f"IQADEF_WEIGHTS_DIR={os.environ['IQADEF_WEIGHTS_DIR']}: {folder} is a file, not a "
                f"folder; set it to the folder holding the weight files (or unset it)"
            )
        paths.append(folder / spec.filename)
    paths.append(cache_dir() / spec.filename)
    return paths


def find_weights(spec: WeightSpec) -> Path | None:
    for path in candidate_paths(spec):
        if path.is_file():
            return path
    return None


_DIGESTS: dict[tuple[str, int, int], str] = {}


#: A file modified less than this long ago is hashed again each time: two writes within one tick of
#: the file system's clock can leave the same size and mtime (git's "racy" files).
_RACY_NS = 2_000_000_000


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a 300 MB checkpoint is hashed once per process."""
    stat = path.stat()
    if time.time_ns() - stat.st_mtime_ns < _RACY_NS:
        return sha256_of(path)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


def fingerprint(source: "WeightSpec | Path", explicit: str | os.PathLike | None = None) -> str:
    """What identifies the content of a weight file a plugin will load (part of its cache keys).

    An explicit path or a packaged file: its sha256. A spec: the pinned sha256 (the file is verified
    against it on load), else (no pin, or only a prefix) the sha256 of the file found locally, else
    ``unresolved:<filename>`` (the runner fetches missing files before planning, so a run does not
    see that state).
    """
    if explicit or isinstance(source, Path):
        path = Path(explicit or source).expanduser()  # type: ignore[arg-type]
        return file_digest(path) if path.is_file() else f"missing:{path}"
    if source.sha256 and len(source.sha256) == 64:
        return source.sha256.lower()
    found = find_weights(source)
    return file_digest(found) if found is not None else f"unresolved:{source.filename}"


def explicit_weight_files(plugin: Any) -> list[tuple[str, Path]]:
    """``(parameter, path)`` for each weight file ``plugin`` loads from a path the user gave.

    A spec's file comes from its ``param``; a plain path (plugins with packaged weights) is explicit
    when it is the value of one of the plugin's path parameters (a packaged default is not).
    """
    given = {str(v): k for k, v in plugin.config.items() if isinstance(v, (str, os.PathLike)) and str(v)}
    out = []
    for source in plugin.weights_in_use():
        if isinstance(source, WeightSpec):
            value = plugin.config.get(source.param)
            if value:
                out.append((source.param, Path(value).expanduser()))
        elif str(source) in given:
            out.append((given[str(source)], Path(source)))
    return out


def weight_problems(
    plugins: Any, *, download: bool | None = None
) -> Iterator[tuple[Any, WeightSpec | None, WeightsError]]:
    """``(plugin, spec, error)`` for each weight file the plugins will load that is not usable: an explicit
    path (``weights_path:``, spec None) that is not a file, or a packaged file that :func:`resolve_weights`
    cannot resolve (``download``: as there; False only looks). The error says where to put the file.

    One owner for what ``iqadef run`` checks before any work (:func:`fetch_missing`, the first problem stops
    it) and what ``iqadef plan`` lists (every problem, nothing downloaded).
    """
    for plugin in plugins:
        for param, path in explicit_weight_files(plugin):
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                yield (
                    plugin,
                    None,
                    WeightsError(f"{plugin.kind} {plugin.label!r}: weights file {path} (given as `{param}:`) {what}"),
                )
        for source in plugin.weights_in_use():
            if isinstance(source, WeightSpec) and not plugin.config.get(source.param):
                try:
                    resolve_weights(source, download=download)
                except WeightsError as exc:
                    yield plugin, source, exc


def fetch_missing(plugins: Any) -> None:
    """Resolve (download if allowed) every weight file the plugins will load, before any work starts.

    A missing file then stops the run at once with the message of :func:`resolve_weights` (where to put
    it), not after hours of other cells; and cache keys see the file's content from the first run on.
    Explicit paths (``weights_path:``) are checked too (the registry loader already did, for configs
    written by hand in code it is here).
    """
    for _plugin, _spec, error in weight_problems(plugins):
        raise error


def verify(path: Path, spec: WeightSpec) -> None:
    """Refuse a file whose sha256 differs from the pinned one."""
    if spec.sha256 is None:
        return
    actual = sha256_of(path)
    if not actual.lower().startswith(spec.sha256.lower()):
        raise WeightsError(
            f"{path}: sha256 {actual} does not match the pinned {spec.sha256} for {spec.filename}; "
            f"the file is corrupt or not the expected release: delete it and download it again"
        )


def resolve_weights(
    spec: WeightSpec, explicit: str | os.PathLike | None = None, *, download: bool | None = None, progress: bool = True
) -> Path:
    """The local path of ``spec``'s file, downloading it if needed. See the module docstring."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} (given as `weights_path:`) does not exist")
        verify(path, spec)
        return path
    found = find_weights(spec)
    if found is not None:
        verify(found, spec)
        return found
    if download is None:
        download = not offline()
    if not download or not spec.urls:
        raise WeightsError(
            _missing_message(spec, "downloads are disabled (IQADEF_OFFLINE)" if spec.urls else "it has no download URL")
        )
    errors = []
    for url in spec.urls:
        try:
            return download_to_cache(spec, url, progress=progress)
        except WeightsError:
            raise
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {exc}")
    raise WeightsError(_missing_message(spec, "download failed (" + "; ".join(errors) + ")"))


def _missing_message(spec: WeightSpec, why: str) -> str:
    places = " or ".join(str(p) for p in candidate_paths(spec))
    urls = ", ".join(spec.urls) or "(no URL known)"
    by_hand = f" (or by hand from the authors' copies: {', '.join(spec.mirrors)})" if spec.mirrors else ""
    return (
        f"weights {spec.filename!r} not found and {why}. Download it from {urls}{by_hand} and put it at {places} "
        f"(or set IQADEF_WEIGHTS_DIR to the folder holding it, or pass `weights_path: /path/to/{spec.filename}`)"
    )


def download_to_cache(spec: WeightSpec, url: str, *, progress: bool = True) -> Path:
    """Download ``url`` into the cache under ``spec.filename`` (:func:`iqadef.core.fetch.download`: a
    ``.part`` file beside it, resumed when a transfer was cut short, verified, then renamed into place)."""
    target = cache_dir() / spec.filename
    try:
        return _download(
            url,
            target,
            sha256=spec.sha256,
            progress=progress,
            label=spec.filename,
            check=lambda part: check_checkpoint_file(part, label=url),
        )
    except FetchError as exc:
        raise WeightsError(str(exc)) from None


def check_checkpoint_file(path: Path, label: str | None = None) -> None:
    """Refuse files that are obviously not checkpoints (an HTML error page, an empty file, a folder)."""
    label = label or str(path)
    if path.is_dir():
        raise WeightsError(f"{label}: is a folder, not a PyTorch checkpoint; give the path of the .pt/.pth file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise WeightsError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise WeightsError(f"{label}: the file is empty, not a checkpoint; delete it and download it again")
    if looks_like_web_page(head):
        raise WeightsError(
            f"{label}: this is a web page, not a checkpoint (a failed download?); "
            f"delete {path} and download the file again"
        )


#: How the files ``torch.load`` reads begin: a zip archive (torch >= 1.6) or a pickle (protocol 2+).
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def _is_checkpoint_format(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4).startswith(_CHECKPOINT_MAGIC)


def _not_a_checkpoint(path: Path, exc: BaseException) -> WeightsError:
    """A file that is not in a format ``torch.load`` reads: say what it is, not torch's ``KeyError: 101``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if looks_like_text(head):
        first = head[:32].decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
        what = f"a text file, starting {first!r}"
    else:
        what = binary_kind(head) or "neither a zip archive nor a pickle"
    return WeightsError(
        f"{path} is not a PyTorch checkpoint ({what}; torch.load: {_first_sentence(exc)}); give "
        f"the path of a .pt/.pth file written by torch.save"
    )


def _first_sentence(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0]
    if len(text) > 120 and ". " in text:
        text = text.split(". ")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def numpy_safe_globals() -> list:
    """The numpy names a checkpoint may use for plain numbers and numeric arrays (nothing callable beyond
    numpy's own reconstructors, no object arrays). Numpy 1.x pickles say ``numpy.core``, 2.x ``numpy._core``."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    dtype_names = (
        "Float16DType",
        "Float32DType",
        "Float64DType",
        "LongDoubleDType",
        "Int8DType",
        "Int16DType",
        "Int32DType",
        "Int64DType",
        "LongDType",
        "LongLongDType",
        "UInt8DType",
        "UInt16DType",
        "UInt32DType",
        "UInt64DType",
        "ULongDType",
        "ULongLongDType",
        "BoolDType",
    )
    dtypes = [getattr(np.dtypes, n) for n in dtype_names if hasattr(np.dtypes, n)]
    return [
        scalar,
        reconstruct,
        np.ndarray,
        np.dtype,
        *dtypes,
        (scalar, "numpy.core.multiarray.scalar"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (scalar, "numpy._core.multiarray.scalar"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_numpy: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors for files that are not checkpoints.

    A pickle that would run code (anything beyond tensors and plain containers) is refused.
    ``allow_numpy=True`` also accepts numpy numbers and numeric arrays (some official checkpoints store
    their calibration constants that way), via ``torch.serialization.safe_globals`` with those types only.
    """
    path = Path(path)
    check_checkpoint_file(path)
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(numpy_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _is_checkpoint_format(path):
            raise _not_a_checkpoint(path, exc) from None
        detail = _unpickling_detail(str(exc))
        raise WeightsError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors, numbers and "
            f"plain containers (loaded with weights_only=True, so nothing in it was run); "
            f"details: {detail}"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        AttributeError,
        LookupError,
        OSError,
        UnicodeDecodeError,
    ) as exc:
        # a text file or /etc/passwd makes torch's pickle reader fail with KeyError: 101 or IndexError
        if not _is_checkpoint_format(path):
            raise _not_a_checkpoint(path, exc) from None
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)}); it may be truncated "
            f"or corrupt: delete it and download it again"
        ) from None


def _unpickling_detail(message: str) -> str:
    """The informative line of torch's long weights-only message (which global was refused)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for needle in ("GLOBAL", "but got", "Unsupported"):
        for line in lines:
            if needle in line:
                return line
    useful = [
        line
        for line in lines
        if not line.startswith(
            ("Check the documentation", "Weights only load failed", "(1)", "(2)", "Please file an issue")
        )
    ]
    return useful[0] if useful else (lines[0] if lines else message)


def load_weights(
    spec: WeightSpec,
    explicit: str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
    *,
    allow_numpy: bool = False,
) -> Any:
    """Resolve then load ``spec`` (the one call most plugins need)."""
    return load_checkpoint(resolve_weights(spec, explicit), map_location=map_location, allow_numpy=allow_numpy)


def install_file(src: str | os.PathLike, spec: WeightSpec) -> Path:
    """Copy a file the user downloaded by hand into the cache, verifying it first."""
    src = Path(src)
    verify(src, spec)
    check_checkpoint_file(src)
    target = cache_dir() / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, Any], label: str, *, assign: bool = False) -> None:
    """Load ``state`` into ``module``; a clear WeightsError lists missing/unexpected keys and wrong shapes.

    ``assign=True`` makes the module use the checkpoint's tensors instead of copying into its own, so a
    module built on the ``meta`` device (no memory, no random init) can be filled directly.
    """
    try:
        result = module.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line or "copying" in line]
        raise WeightsError(
            f"{label}: checkpoint does not fit the model: {'; '.join(lines[:3]) or str(exc)}; is it the right file?"
        ) from None
    if result.missing_keys or result.unexpected_keys:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise WeightsError(
            f"{label}: checkpoint does not fit the model: missing keys [{show(result.missing_keys)}], "
            f"unexpected keys [{show(result.unexpected_keys)}]; is it the right file?"
        )


def trained_record_path(out: Path) -> Path:
    """Where a trainer writes the training record of the checkpoint ``out``: ``out`` with ``.json``. An
    ``out`` that already ends in ``.json`` would be overwritten by its own record (no weights left): refused,
    so a trainer calls this before it trains."""

    out = Path(out)
    record = out.with_suffix(".json")
    if record == out:
        raise ConfigError(
            f"--out {out}: the training record is written to `<out without suffix>.json`, which is "
            f"this very file; give the checkpoint another suffix, e.g. --out {out.with_suffix('.pt')}"
        )
    return record


def save_trained_weights(out: Path, checkpoint: dict[str, Any], record: dict[str, Any]) -> None:
    """Write a trained checkpoint to ``out`` and its training record to :func:`trained_record_path`, each
    atomically (a killed training leaves no half file); what ``train-fcn`` and ``train-dms`` write. A
    checkpoint holding NaN or infinite values (a diverged training) is refused, not saved."""
    out = Path(out)
    record_path = trained_record_path(out)
    bad = [
        name
        for name, value in _tensors(checkpoint)
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise IqadefError(
            f"--out {out}: not written: the trained weights hold NaN or infinite values "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the training diverged: lower "
            f"--lr or check the other parameters"
        )
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buf.getvalue())
        atomic_write_bytes(record_path, json.dumps(record, indent=2, default=float).encode())
    except OSError as exc:
        raise IqadefError(f"--out {out}: cannot write ({exc.strerror or exc})") from None


def _tensors(tree: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` for every tensor in a checkpoint's nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        return [(prefix or "tensor", tree)]
    if isinstance(tree, dict):
        return [t for k, v in tree.items() for t in _tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, (list, tuple)):
        return [t for i, v in enumerate(tree) for t in _tensors(v, f"{prefix}[{i}]")]
    return []


_numpy_safe_globals = numpy_safe_globals  # the name the pyiqa adapter 0.1.0 imports
