"""``kadid10k``: KADID-10k (Lin, Hosu, Saupe, QoMEX 2019): 81 reference images, each with 25 distortions at
5 levels (10,125 distorted images), rated by crowd workers.

Official layout once unpacked (``kadid10k.zip``): ``kadid10k/images/`` holding the references
(``I01.png``...) and the distorted images (``I01_01_01.png``: image, distortion, level), and
``kadid10k/dmos.csv`` with ``dist_img, ref_img, dmos, var``. Its ``dmos`` is a degradation rating on 1-5
(5: imperceptible), so higher is better, like a MOS.
"""

from __future__ import annotations

import csv
import io

from iqadef import ConfigError, DatasetPlugin, Entry, Param, RemoteFile, hookimpl, read_text


class KADID10k(DatasetPlugin):
    """KADID-10k: 10,125 distorted images of 81 references with DMOS (1-5, higher is better); `images: reference`
    gives the 81 references."""

    name = "kadid10k"
    title = "KADID-10k (Lin, Hosu, Saupe, QoMEX 2019)"
    homepage = "https://database.mmsp-kn.de/kadid-10k-database.html"
    licence = (
        "no formal licence: the authors' page says it is freely available to the research community "
        "and asks that the paper be cited"
    )
    params = (
        Param(
            "images",
            str,
            "distorted",
            "which images: the distorted ones (with DMOS) or the references",
            choices=("distorted", "reference"),
        ),
    )
    remote = (
        RemoteFile(
            "kadid10k.zip",
            ("https://datasets.vqa.mmsp-kn.de/archives/kadid10k.zip",),
            archive="zip",
            description="images and dmos.csv, about 3 GB (sha256 not published)",
        ),
    )

    @property
    def base_dir(self):
        nested = self.root / "kadid10k"
        return nested if (nested / "dmos.csv").is_file() or not (self.root / "dmos.csv").is_file() else self.root

    @property
    def images_dir(self):
        return self.base_dir / "images"

    def expected_count(self) -> int:
        """81 references, each distorted 25 ways at 5 levels: 10,125 rows of dmos.csv."""
        return 81 if self.config["images"] == "reference" else 10125

    def missing(self) -> list[str]:
        out = []
        rel = "kadid10k/" if self.base_dir != self.root else ""
        if not (self.base_dir / "dmos.csv").is_file():
            out.append(f"{rel}dmos.csv")
        if not self.images_dir.is_dir():
            out.append(f"{rel}images/")
        return out

    def _rows(self) -> list[dict[str, str]]:
        path = self.base_dir / "dmos.csv"
        text, _ = read_text(path, f"{self.where} dmos.csv")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        need = {"dist_img", "ref_img", "dmos"}
        if not need <= set(reader.fieldnames or []):
            raise ConfigError(f"{path}: needs the columns dist_img, ref_img, dmos; found {reader.fieldnames}")
        return list(reader)

    def entries(self) -> list[Entry]:
        rows = self._rows()
        if self.config["images"] == "reference":
            refs = sorted({r["ref_img"].strip() for r in rows})
            return [Entry(name, self.images_dir / name) for name in refs]
        out = []
        for r in rows:
            name = r["dist_img"].strip()
            try:
                value = float(r["dmos"])
            except ValueError:
                raise ConfigError(
                    f"{self.base_dir / 'dmos.csv'}: dmos {r['dmos']!r} for {name!r} is not a number"
                ) from None
            out.append(Entry(name, self.images_dir / name, value))
        return sorted(out, key=lambda e: e.name)


@hookimpl
def iqadef_register_datasets(register):
    register(KADID10k)
