"""``folder``: a folder of images (searched recursively) with an optional hand-made MOS CSV: what
``dataset: {images: PATH, mos: FILE}`` always meant."""

from __future__ import annotations

from pathlib import Path

from iqadef import IMAGE_SUFFIXES, ConfigError, DatasetPlugin, Entry, Param, builtin_images_dir, hookimpl, read_mos


class Folder(DatasetPlugin):
    """A folder of images (recursively) and an optional MOS CSV (image column + score column)."""

    name = "folder"
    title = "a folder of your images"
    licence = "yours"
    fetchable = False
    plain_folder = True  # no split or sample: the Dataset scans the folder itself, as always
    params = (
        Param("images", str, None, "the folder of images, relative to the registry (`builtin`: the bundled set)"),
        Param(
            "mos",
            str,
            None,
            "CSV with an image column (image/name/file/filename/image_name) and a score "
            "column (mos/dmos/score); `,` `;` or tab; UTF-8/-sig, UTF-16 with BOM, Latin-1",
        ),
    )

    def __init__(self, root=None, **kwargs):
        super().__init__(root, **kwargs)
        images, mos = self.config["images"], self.config["mos"]
        if not images:
            raise ConfigError(f"{self.where}.images: give the folder of images (or `builtin`)")
        self.images_dir = builtin_images_dir() if images == "builtin" else (self.base / images).expanduser()
        self.mos_file = (self.base / mos).expanduser() if mos else None
        self.root = self.images_dir

    def check(self) -> None:
        if not self.images_dir.is_dir():
            raise ConfigError(f"{self.where}.images: {self.images_dir} is not a folder")
        if self.mos_file is not None and not self.mos_file.is_file():
            what = "is not a file" if self.mos_file.exists() else "does not exist"
            raise ConfigError(f"{self.where}.mos: {self.mos_file} {what}")

    def entries(self) -> list[Entry]:
        scores = read_mos(self.mos_file, f"{self.where}.mos") if self.mos_file else {}
        files = sorted(p for p in self.images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        out = []
        for path in files:
            name = path.relative_to(self.images_dir).as_posix()
            out.append(Entry(name, Path(path), scores.get(name)))
        return out


@hookimpl
def iqadef_register_datasets(register):
    register(Folder)
