"""``nips2017``: the development set of the NIPS 2017 adversarial attacks and defences competition
(Google Brain, Kaggle): 1000 ImageNet-compatible 299x299 PNGs, the study's source of clean images.

Layout of the Kaggle release (``nips-2017-adversarial-learning-development-set.zip``): ``images.csv``
(``ImageId, URL, x1, y1, x2, y2, TrueLabel, TargetClass, OriginalLandingURL, License, Author,
AuthorProfileURL``) and ``images/<ImageId>.png``. The cleverhans repository publishes the same table as
``dev_dataset.csv`` (accepted instead of images.csv) with a script that downloads the images from their
original URLs. There are no quality scores.
"""

from __future__ import annotations

import csv
import io

from iqadef import ConfigError, DatasetPlugin, Entry, RemoteFile, hookimpl, read_text

KAGGLE = "https://www.kaggle.com/datasets/google-brain/nips-2017-adversarial-learning-development-set"
TABLES = ("images.csv", "dev_dataset.csv")


class NIPS2017(DatasetPlugin):
    """NIPS 2017 adversarial competition dev set: 1000 ImageNet-compatible 299x299 PNGs (no MOS)."""

    name = "nips2017"
    title = "NIPS 2017 Adversarial Learning Development Set (Google Brain)"
    homepage = KAGGLE
    licence = (
        "each image under the licence given in its License column (the images were posted online under "
        "CC BY; Author and AuthorProfileURL credit them)"
    )
    scores = None
    remote = (
        RemoteFile(
            "nips-2017-adversarial-learning-development-set.zip",
            archive="zip",
            manual=f"needs a Kaggle login: download it from {KAGGLE}",
            description="images.csv and images/*.png (sha256 not published)",
        ),
    )

    @property
    def images_dir(self):
        return self.root / "images"

    def expected_count(self) -> int:
        """The development set's 1000 images."""
        return 1000

    def _table(self):
        return next((self.root / t for t in TABLES if (self.root / t).is_file()), None)

    def missing(self) -> list[str]:
        out = []
        if self._table() is None:
            out.append("images.csv")
        if not self.images_dir.is_dir():
            out.append("images/")
        return out

    def entries(self) -> list[Entry]:
        path = self._table()
        text, _ = read_text(path, f"{self.where} {path.name}")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "ImageId" not in (reader.fieldnames or []):
            raise ConfigError(f"{path}: needs an ImageId column; found {reader.fieldnames}")
        ids = sorted({row["ImageId"].strip() for row in reader if (row.get("ImageId") or "").strip()})
        return [Entry(f"{i}.png", self.images_dir / f"{i}.png") for i in ids]


@hookimpl
def iqadef_register_datasets(register):
    register(NIPS2017)
