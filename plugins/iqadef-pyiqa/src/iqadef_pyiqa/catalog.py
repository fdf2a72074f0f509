"""What pyiqa offers, read from its ``default_model_configs.py`` without importing pyiqa.

Importing pyiqa takes seconds (it imports every architecture, transformers included); every ``iqadef``
command loads the plugins, so the catalogue is read from the file alone (it imports only ``OrderedDict``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: No-reference entries of pyiqa that do not score one image: they are not registered.
UNSUPPORTED = {
    "fid": "a distance between two image sets, not a per-image score",
    "sfid": "a distance between two image sets, not a per-image score",
    "fid_dinov2": "a distance between two image sets, not a per-image score",
    "inception_score": "a score of an image set, not of one image",
    "clipscore": "scores an image against a caption, which a grid cell does not have",
}

#: Metrics whose pyiqa implementation gives no useful gradient (checked: tests/plugins/iqadef-pyiqa).
NOT_DIFFERENTIABLE = {
    "entropy": "it counts a histogram of integer pixel values (no gradient at all)",
    "piqe": "it rounds the image to 8 bits with torch.round, whose gradient is zero",
}

#: Ranges for entries whose pyiqa range is open-ended ('~0, ~'): the attacks' loss divides by the span.
ASSUMED_RANGES = {
    "pi": ((0.0, 10.0), "PI = ((10 - Ma) + NIQE) / 2 is about 0..10 on natural images; pyiqa states '~0, ~'"),
}


@dataclass(frozen=True)
class Entry:
    """One pyiqa no-reference metric as the adapter exposes it."""

    pyiqa_name: str
    arch: str
    options: dict
    lower_better: bool
    range: tuple[float, float]
    range_note: str          # pyiqa's text, or why another range is assumed
    differentiable: bool
    why_not_differentiable: str

    @property
    def name(self) -> str:
        return "pyiqa-" + self.pyiqa_name


def pyiqa_version() -> str | None:
    try:
        return importlib.metadata.version("pyiqa")
    except importlib.metadata.PackageNotFoundError:
        return None


def _configs_file() -> Path | None:
    spec = importlib.util.find_spec("pyiqa")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_model_configs.py"
    return path if path.is_file() else None


def _literal_configs(path: Path) -> dict:
    """``DEFAULT_CONFIGS`` of pyiqa's file, evaluated as a literal (``OrderedDict({...})``), never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEFAULT_CONFIGS" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and value.args:  # OrderedDict({...})
                value = value.args[0]
            return ast.literal_eval(value)
    raise ValueError(f"{path}: no DEFAULT_CONFIGS found (a pyiqa version the adapter does not know?)")


_NUMBER = re.compile(r"^~?\s*([-+]?\d+(?:\.\d*)?)\s*$")


def parse_range(text: str | None) -> tuple[float, float] | None:
    """pyiqa's ``score_range`` ('0, 100', '~0, ~1', '~-1, ~2') as numbers; None when a bound is open."""
    if not text or "," not in text:
        return None
    low, high = (part.strip() for part in text.split(",", 1))
    m_low, m_high = _NUMBER.match(low), _NUMBER.match(high)
    if not (m_low and m_high):
        return None
    lo, hi = float(m_low.group(1)), float(m_high.group(1))
    return (lo, hi) if hi > lo else None


@lru_cache(maxsize=1)
def entries() -> tuple[Entry, ...]:
    """Every per-image no-reference metric of the installed pyiqa; empty when pyiqa is not installed."""
    path = _configs_file()
    if path is None:
        return ()
    out = []
    for name, cfg in _literal_configs(path).items():
        if cfg.get("metric_mode") != "NR" or name in UNSUPPORTED:
            continue
        stated = cfg.get("score_range")
        rng = parse_range(stated)
        note = f"pyiqa: {stated!r}"
        if rng is None:
            if name not in ASSUMED_RANGES:
                continue  # an open range nobody has chosen a span for: not registered (docs/pyiqa.md)
            rng, why = ASSUMED_RANGES[name]
            note = f"assumed: {why}"
        out.append(Entry(pyiqa_name=name, arch=cfg["metric_opts"]["type"], options=dict(cfg["metric_opts"]),
                         lower_better=bool(cfg.get("lower_better", False)), range=rng, range_note=note,
                         differentiable=name not in NOT_DIFFERENTIABLE,
                         why_not_differentiable=NOT_DIFFERENTIABLE.get(name, "")))
    return tuple(out)


def skipped() -> dict[str, str]:
    """No-reference entries of the installed pyiqa that are not registered, with the reason."""
    path = _configs_file()
    if path is None:
        return {}
    registered = {e.pyiqa_name for e in entries()}
    return {name: UNSUPPORTED.get(name, f"open score range {cfg.get('score_range')!r}")
            for name, cfg in _literal_configs(path).items()
            if cfg.get("metric_mode") == "NR" and name not in registered}
