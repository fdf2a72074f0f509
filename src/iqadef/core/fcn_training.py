"""``iqadef train-fcn``: train the FCN purifier on the (attacked, clean) pairs of a finished run.

The run's adversarial cache holds every x_a as a PNG; ``results.parquet`` says which clean image and
which attack each came from. The training itself is :func:`iqadef.plugins.defences.fcn.train_fcn`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .dataset import read_image
from .errors import IqadefError
from .runner import read_png


def collect_pairs(run_dir: Path, *, metric: str | None = None, attack: str | None = None
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], pd.DataFrame]:
    """(attacked, clean) image pairs of a run, one per (metric, attack, image), in a stable order."""
    table = run_dir / "results.parquet"
    if not table.is_file():
        raise IqadefError(f"{run_dir}: no results.parquet; run `iqadef run` first")
    df = pd.read_parquet(table)
    df = df[(df["status"] == "ok") & (df["adv_path"] != "")]
    if "adaptive" in df:
        df = df[df["adaptive"].fillna("none") == "none"]
    if metric:
        df = df[df["metric"] == metric]
    if attack:
        df = df[df["attack"] == attack]
    df = df.drop_duplicates(["metric", "attack", "image"]).sort_values(["metric", "attack", "image"])
    if df.empty:
        raise IqadefError(f"{run_dir}: no adversarial images match (metric={metric!r}, attack={attack!r})")
    pairs = []
    for row in df.itertuples():
        adv_file = run_dir / row.adv_path
        if not adv_file.is_file():
            raise IqadefError(f"{adv_file}: listed in results.parquet but missing; resume the run to recreate it")
        pairs.append((read_png(adv_file), read_image(Path(row.image_path))))
    return pairs, df


def train_fcn_from_run(run_dir: Path, out: Path, *, epochs: int = 200, batch_size: int = 4, lr: float = 1e-3,
                       seed: int = 0, crop: int | None = None, metric: str | None = None,
                       attack: str | None = None) -> dict[str, Any]:
    """Train on a run's pairs and write the weights to ``out`` (plus ``out`` with ``.json``: the record)."""
    from ..plugins.defences.fcn import train_fcn

    pairs, df = collect_pairs(Path(run_dir), metric=metric, attack=attack)
    # split by image (the reference's 80/20 split of images), so no image is on both sides
    state, record = train_fcn(pairs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, crop=crop,
                              groups=list(df["image"]))
    record = {**record, "pairs": len(pairs), "metrics": sorted(df["metric"].unique()),
              "attacks": sorted(df["attack"].unique()), "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": seed, "crop": crop, "run_dir": str(run_dir)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=float))
    return record
