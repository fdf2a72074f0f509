"""``builtin``: the 14 images bundled with iqadef (docs/embedded.md), the offline default."""

from __future__ import annotations

from pathlib import Path

from iqadef import IMAGE_SUFFIXES, DatasetPlugin, Entry, builtin_images_dir, hookimpl


class Builtin(DatasetPlugin):
    """The images bundled with iqadef (scikit-image samples and crops; no MOS)."""

    name = "builtin"
    title = "iqadef's bundled images"
    licence = "per image, as stated by scikit-image (iqadef/data/images/LICENSES.md)"
    scores = None
    fetchable = False
    plain_folder = True

    def __init__(self, root=None, **kwargs):
        super().__init__(root, **kwargs)
        self.images_dir = self.root = builtin_images_dir()
        self.mos_file = None

    def entries(self) -> list[Entry]:
        return [
            Entry(p.relative_to(self.images_dir).as_posix(), Path(p))
            for p in sorted(self.images_dir.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]


@hookimpl
def iqadef_register_datasets(register):
    register(Builtin)
