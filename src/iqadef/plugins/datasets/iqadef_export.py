"""``iqadef-export``: the folder written by ``iqadef export`` read back as a dataset, so defences run on a
published set of adversarial images without running the attacks (core/export.py)."""

from __future__ import annotations

import math

from iqadef import ConfigError, Param, hookimpl
from iqadef.core.dataset import DatasetPlugin, Entry
from iqadef.core.export import MARKER


class IqadefExport(DatasetPlugin):
    """An `iqadef export` folder: its x_a (or D(x_a)) images, with the MOS of their source images."""

    name = "iqadef-export"
    title = "an adversarial dataset written by `iqadef export`"
    licence = "that of the source dataset (the export's README.md says which)"
    fetchable = False
    params = (
        Param("path", str, None, "the export folder (relative to the registry)"),
        Param("kind", str, "adversarial", "x_a or D(x_a) images", choices=("adversarial", "defended")),
        Param("metric", str, None, "only the images attacked on this metric (its label)"),
        Param("attack", str, None, "only the images of this attack (its label)"),
    )

    def __init__(self, root=None, **kwargs):
        super().__init__(root, **kwargs)
        if not self.config["path"]:
            raise ConfigError(f"{self.where}.path: give the folder written by `iqadef export`")
        self.root = self.images_dir = (self.base / self.config["path"]).expanduser()
        self.mos_file = None

    def check(self) -> None:
        if not (self.root / MARKER).is_file() or not (self.root / "index.parquet").is_file():
            raise ConfigError(f"{self.where}.path: {self.root} is not a folder written by `iqadef export` "
                              f"(no {MARKER} and index.parquet); export a run there first")

    def entries(self) -> list[Entry]:
        import pandas as pd

        index = pd.read_parquet(self.root / "index.parquet")
        index = index[index["kind"] == self.config["kind"]]
        for key in ("metric", "attack"):
            if self.config[key] is not None:
                chosen = index[index[key] == self.config[key]]
                if not len(chosen):
                    known = ", ".join(sorted(index[key].unique()))
                    raise ConfigError(f"{self.where}.{key}: {self.config[key]!r} is not in {self.root}; it has {known}")
                index = chosen
        out = []
        for row in index.itertuples(index=False):
            mos = None if row.mos is None or (isinstance(row.mos, float) and math.isnan(row.mos)) else float(row.mos)
            out.append(Entry(row.file, self.root / row.file, mos))
        return sorted(out, key=lambda e: e.name)


@hookimpl
def iqadef_register_datasets(register):
    register(IqadefExport)
