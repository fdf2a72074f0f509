"""``koniq10k``: KonIQ-10k (Hosu, Lin, Sziranyi, Saupe, IEEE TIP 2020), 10,073 in-the-wild images with MOS.

Official layout once unpacked (database.mmsp-kn.de/koniq-10k-database.html): ``1024x768/`` or ``512x384/``
(the two releases, JPEG), ``koniq10k_scores_and_distributions.csv`` (``image_name, c1..c5, c_total, MOS,
SD, MOS_zscore``; MOS on the 1-5 scale, MOS_zscore on 1-100), and for the splits the authors'
``koniq10k_distributions_sets.csv`` (the same columns plus ``set``: training / validation / test).
"""

from __future__ import annotations

import csv
import io

from iqadef import ConfigError, DatasetPlugin, Entry, Param, RemoteFile, hookimpl, read_mos, read_text

_ARCHIVES = "https://datasets.vqa.mmsp-kn.de/archives/"
SCORES = "koniq10k_scores_and_distributions.csv"
SETS = "koniq10k_distributions_sets.csv"
#: the ``set`` column's values, by split name
SPLITS = {"train": "training", "val": "validation", "test": "test"}


class KonIQ10k(DatasetPlugin):
    """KonIQ-10k: 10,073 in-the-wild images (1024x768 or 512x384) with MOS (1-5) or MOS z-score; splits from the
    authors' sets file."""

    name = "koniq10k"
    title = "KonIQ-10k (Hosu et al., IEEE TIP 2020)"
    homepage = "https://database.mmsp-kn.de/koniq-10k-database.html"
    licence = (
        "images from YFCC100M under their Flickr Creative Commons licences; the database is offered for "
        "research by the University of Konstanz: read the terms on its page before use"
    )
    splits = tuple(SPLITS)
    params = (
        Param("resolution", str, "1024x768", "which release", choices=("1024x768", "512x384")),
        Param("score", str, "MOS", "which column of the score file is the MOS", choices=("MOS", "MOS_zscore")),
    )

    def remote_files(self):
        res = self.config["resolution"]
        return (
            RemoteFile(
                f"koniq10k_{res}.zip",
                (f"{_ARCHIVES}koniq10k_{res}.zip",),
                archive="zip",
                description=f"the {res} images (sha256 not published)",
            ),
            RemoteFile(
                "koniq10k_scores_and_distributions.zip",
                (f"{_ARCHIVES}koniq10k_scores_and_distributions.zip",),
                archive="zip",
                description="the score file (sha256 not published)",
            ),
            RemoteFile(
                SETS,
                ("https://raw.githubusercontent.com/subpic/koniq/master/metadata/" + SETS,),
                description="the authors' train/validation/test split (sha256 not published)",
            ),
        )

    remote = (
        RemoteFile("koniq10k_1024x768.zip", (f"{_ARCHIVES}koniq10k_1024x768.zip",), archive="zip"),
        RemoteFile("koniq10k_512x384.zip", (f"{_ARCHIVES}koniq10k_512x384.zip",), archive="zip"),
        RemoteFile(
            "koniq10k_scores_and_distributions.zip",
            (f"{_ARCHIVES}koniq10k_scores_and_distributions.zip",),
            archive="zip",
        ),
        RemoteFile(SETS, ("https://raw.githubusercontent.com/subpic/koniq/master/metadata/" + SETS,)),
    )

    @property
    def images_dir(self):
        return self.root / self.config["resolution"]

    def expected_count(self) -> int:
        """The release's 10,073 images (one score row each, in either resolution)."""
        return 10073

    def _score_file(self):
        for name in (SCORES, SETS):  # the sets file carries the same columns
            if (self.root / name).is_file():
                return self.root / name
        return None

    def missing(self) -> list[str]:
        out = []
        if not self.images_dir.is_dir():
            out.append(f"{self.config['resolution']}/")
        if self._score_file() is None:
            out.append(SCORES)
        return out

    def _sets(self) -> dict[str, str]:
        path = self.root / SETS
        if not path.is_file():
            return {}
        text, _ = read_text(path, f"{self.where} {SETS}")
        rows = csv.DictReader(io.StringIO(text, newline=""))
        if "set" not in (rows.fieldnames or []) or "image_name" not in (rows.fieldnames or []):
            raise ConfigError(f"{path}: needs the columns image_name and set; found {rows.fieldnames}")
        back = {v: k for k, v in SPLITS.items()}
        return {r["image_name"].strip(): back.get(r["set"].strip(), r["set"].strip()) for r in rows}

    def entries(self) -> list[Entry]:
        scores = read_mos(
            self._score_file(), f"{self.where} scores", name_column="image_name", score_column=self.config["score"]
        )
        sets = self._sets()
        out = []
        for name in sorted(scores):
            out.append(Entry(name, self.images_dir / name, scores[name], sets.get(name)))
        return out


@hookimpl
def iqadef_register_datasets(register):
    register(KonIQ10k)
