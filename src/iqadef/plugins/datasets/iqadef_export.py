"""``iqadef-export``: the folder written by ``iqadef export`` read back as a dataset, so defences run on a
published set of adversarial images without running the attacks (export.py)."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

from iqadef import EXPORT_MARKER as MARKER
from iqadef import ConfigError, DatasetPlugin, Entry, Param, hookimpl


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
            raise ConfigError(
                f"{self.where}.path: {self.root} is not a folder written by `iqadef export` "
                f"(no {MARKER} and index.parquet); export a run there first"
            )

    def entries(self) -> list[Entry]:
        """The index's rows of the chosen kind, each with the sha256 the index records: a file replaced or
        damaged since the export is left out as a dataset problem (``Dataset`` compares the hashes). A row
        naming a file outside the export folder (absolute, ``..``, a symbolic link leading out) means the
        index is not what ``iqadef export`` wrote: the dataset is refused."""
        import pandas as pd

        try:
            index = pd.read_parquet(self.root / "index.parquet")
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors have no common base: all mean "unreadable"
            raise ConfigError(
                f"{self.where}.path: {self.root / 'index.parquet'} cannot be read "
                f"({type(exc).__name__}); export the run there again"
            ) from None
        missing = {"file", "kind", "mos", "sha256", "metric", "attack"} - set(index.columns)
        if missing:
            raise ConfigError(
                f"{self.where}.path: {self.root / 'index.parquet'} lacks {', '.join(sorted(missing))}; "
                f"export the run there again with this iqadef"
            )
        index = index[index["kind"] == self.config["kind"]]
        for key in ("metric", "attack"):
            if self.config[key] is not None:
                chosen = index[index[key] == self.config[key]]
                if not len(chosen):
                    known = ", ".join(sorted(index[key].unique()))
                    raise ConfigError(f"{self.where}.{key}: {self.config[key]!r} is not in {self.root}; it has {known}")
                index = chosen
        root = self.root.resolve()
        out = []
        for row in index.itertuples(index=False):
            path = self._inside(root, row.file)
            if not isinstance(row.sha256, str) or len(row.sha256) != 64:
                raise ConfigError(
                    f"{self.where}.path: {self.root / 'index.parquet'} gives no sha256 for {row.file!r}; "
                    f"export the run there again"
                )
            mos = None if row.mos is None or (isinstance(row.mos, float) and math.isnan(row.mos)) else float(row.mos)
            out.append(Entry(row.file, path, mos, sha256=row.sha256))
        return sorted(out, key=lambda e: e.name)

    def _inside(self, root: Path, rel: object) -> Path:
        """``rel`` as a file under the export folder, or a ConfigError when it leads out of it."""
        text = rel if isinstance(rel, str) else ""
        parts = PurePosixPath(text).parts
        if not text or PurePosixPath(text).is_absolute() or "\\" in text or ".." in parts or ":" in text.split("/")[0]:
            raise ConfigError(
                f"{self.where}.path: {self.root / 'index.parquet'} names {rel!r}, which is not a "
                f"file inside {self.root}; the index is damaged or not iqadef's: export the run again"
            )
        path = self.root.joinpath(*parts)
        if not path.resolve().is_relative_to(root):
            raise ConfigError(
                f"{self.where}.path: {self.root / 'index.parquet'} names {rel!r}, which leads out of "
                f"{self.root} through a symbolic link; remove the link or export the run again"
            )
        return path


@hookimpl
def iqadef_register_datasets(register):
    register(IqadefExport)
