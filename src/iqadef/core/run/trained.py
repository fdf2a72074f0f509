"""Cells where a fine-tuned metric scores an image it was trained on.

``iqadef train-robust`` writes beside its checkpoint a record (``<weights>.json``) that lists the sha256 of
every training image. A metric loading such a file (``weights_path:``) evaluated on one of those images is
not a held-out measurement: the run says so once (a problem line) and marks the cells in the exported
tables (``trained_on_image``; the column appears only when some metric of the grid has such a record).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..weights import explicit_weight_files

TRAINING_RECORD_KIND = "iqadef train-robust"


def training_images(weights: Path) -> set[str] | None:
    """The sha256 of the images ``weights`` was trained on, from its record; None without a record."""
    record_file = Path(weights).with_suffix(".json")
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != TRAINING_RECORD_KIND:
        return None
    images = (record.get("data") or {}).get("images") or []
    return {str(i["sha256"]) for i in images if isinstance(i, dict) and i.get("sha256")}


def trained_images_by_metric(metrics: list[Any]) -> dict[str, set[str]]:
    """For each metric label whose weight file has a training record: the training images' sha256."""
    out: dict[str, set[str]] = {}
    for metric in metrics:
        for _, path in explicit_weight_files(metric):
            hashes = training_images(path)
            if hashes is not None:
                out.setdefault(metric.label, set()).update(hashes)
    return out


def overlap_problems(trained: dict[str, set[str]], dataset) -> list[str]:
    """One line per metric that will score images it was trained on."""
    lines = []
    for label, hashes in trained.items():
        seen = [item.name for item in dataset.items if item.sha256 in hashes]
        if seen:
            lines.append(f"metric {label!r} was fine-tuned on {len(seen)} of this run's images (e.g. {seen[0]!r}); "
                         f"its cells on them are marked trained_on_image and are not held-out results")
    return lines


def mark_trained_cells(df: pd.DataFrame, trained: dict[str, set[str]]) -> pd.DataFrame:
    """Add ``trained_on_image`` (True where the cell's metric was trained on the cell's image)."""
    if not trained or df.empty or "metric" not in df or "image_sha256" not in df:
        return df
    df = df.copy()
    df["trained_on_image"] = [sha in trained.get(label, ()) for label, sha in zip(df["metric"], df["image_sha256"])]
    return df
