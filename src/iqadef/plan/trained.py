"""Cells where a trained artefact meets an image it was trained on.

The trainers (``iqadef train-robust``, ``train-fcn``, ``train-dms``) write beside each checkpoint a record
(``<weights>.json``) that lists the sha256 of every image the training saw (``data.images``; train and
validation images alike: the validation images chose the kept epoch). A metric, purifier or certified defence
loading such a file, evaluated on one of those images, is not a held-out measurement: the run says so once
per plugin (a dataset-problem line, shown in the report) and marks the cells in the exported tables
(``trained_on_image``; the column appears only when some plugin of the grid has such a record).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from iqadef.core.weights import WeightSpec

TRAINING_RECORD_KIND = "iqadef train-robust"


def _record(weights: Path) -> dict[str, Any] | None:
    """The record beside ``weights`` (``<weights>.json``) as a dict; None when there is none or it is unreadable."""
    try:
        record = json.loads(Path(weights).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def training_images(weights: Path) -> set[str] | None:
    """The sha256 of the images ``weights`` was trained on, from its record; None without a record."""
    record = _record(weights)
    data = record.get("data") if isinstance(record, dict) else None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        return None
    return {str(i["sha256"]) for i in images if isinstance(i, dict) and i.get("sha256")}


def weight_files(plugin: Any) -> list[Path]:
    """The weight files ``plugin`` loads that exist here: packaged files, explicit paths, given specs."""
    out = []
    for source in plugin.weights_in_use():
        if isinstance(source, WeightSpec):
            value = plugin.config.get(source.param)
            path = Path(value).expanduser() if value else None
        else:
            path = Path(source)
        if path is not None and path.is_file():
            out.append(path)
    return out


def trained_images(plugins: Iterable[Any]) -> dict[str, set[str]]:
    """For each plugin label whose weight files have a training record: the training images' sha256."""
    out: dict[str, set[str]] = {}
    for plugin in plugins:
        for path in weight_files(plugin):
            hashes = training_images(path)
            if hashes is not None:
                out.setdefault(plugin.label, set()).update(hashes)
    return out


def fine_tuning(plugin: Any) -> dict[str, Any] | None:
    """What ``run.json`` records of a metric fine-tuned by ``iqadef train-robust``: the record's ``method``,
    the number of training images, the weight file and the label of the metric it was trained from
    (``from``); None when no weight file it loads has such a record (the report pairs a fine-tuned metric
    with the run's metric of the same plugin that has none)."""
    for path in weight_files(plugin):
        record = _record(path)
        if record is None or record.get("kind") != TRAINING_RECORD_KIND:
            continue
        images = training_images(path)
        return {
            "method": record.get("method"),
            "images": len(images) if images is not None else None,
            "weights": str(path),
            "from": record.get("metric"),
        }
    return None


def overlap_problems(trained: dict[str, set[str]], dataset, what: str = "metric") -> list[str]:
    """One line per plugin that will meet images it was trained on."""
    lines = []
    for label, hashes in trained.items():
        seen = [item.name for item in dataset.items if item.sha256 in hashes]
        if seen:
            lines.append(
                f"{what} {label!r} was trained on {len(seen)} of this run's images (e.g. {seen[0]!r}); "
                f"its cells on them are marked trained_on_image and are not held-out results"
            )
    return lines


def mark_trained_cells(
    df: pd.DataFrame, trained: dict[str, set[str]], trained_defences: dict[str, set[str]] | None = None
) -> pd.DataFrame:
    """Add ``trained_on_image``: True where the cell's metric or defence was trained on the cell's image."""
    defences = trained_defences or {}
    if not (trained or defences) or df.empty or "metric" not in df or "image_sha256" not in df:
        return df
    df = df.copy()
    df["trained_on_image"] = [
        sha in trained.get(m, ()) or sha in defences.get(d, ())
        for m, d, sha in zip(df["metric"], df["defence"], df["image_sha256"])
    ]
    return df
