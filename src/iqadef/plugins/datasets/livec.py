"""``livec``: LIVE In the Wild Image Quality Challenge Database (Ghadiyaram and Bovik, IEEE TIP 2016):
1,162 photos from mobile devices with MOS (0-100), plus 7 training images.

Layout of ``ChallengeDB_release``: ``Images/`` (the 1,162 test images; ``Images/trainingImages/`` the 7
others), ``Data/AllImages_release.mat`` (the 1,169 names) and ``Data/AllMOS_release.mat`` (their MOS), read
with ``scipy.io.loadmat``. The first 7 entries are the training images; IQA code (hyperIQA, and the
metrics' reference code) uses entries 7..1168, which is the default here.
"""

from __future__ import annotations

from iqadef import ConfigError, DatasetPlugin, Entry, Param, RemoteFile, hookimpl

HOME = "https://live.ece.utexas.edu/research/ChallengeDB/index.html"


class LIVEChallenge(DatasetPlugin):
    """LIVE In the Wild (CLIVE): 1,162 mobile photos with MOS 0-100 (`training_images: true` adds the 7 others)."""

    name = "livec"
    title = "LIVE In the Wild Image Quality Challenge Database (Ghadiyaram, Bovik 2016)"
    homepage = HOME
    licence = (
        "the LIVE copyright notice on its page: free for research use, cite the papers; no "
        "redistribution without permission"
    )
    params = (Param("training_images", bool, False, "also the 7 training images (entries 0-6)"),)
    remote = (
        RemoteFile(
            "ChallengeDB_release.zip",
            archive="zip",
            manual=f"the authors send the link after a request form: {HOME}",
            description="Images/ and Data/*.mat (sha256 not published)",
        ),
    )

    @property
    def base_dir(self):
        nested = self.root / "ChallengeDB_release"
        return nested if nested.is_dir() else self.root

    @property
    def images_dir(self):
        return self.base_dir / "Images"

    def expected_count(self) -> int:
        """1,162 test images, plus the 7 training images with `training_images: true`."""
        return 1169 if self.config["training_images"] else 1162

    def missing(self) -> list[str]:
        rel = "ChallengeDB_release/" if self.base_dir != self.root else ""
        need = ("Images/", "Data/AllImages_release.mat", "Data/AllMOS_release.mat")
        return [rel + n for n in need if not (self.base_dir / n.rstrip("/")).exists()]

    def _mat(self, name: str):
        import scipy.io

        path = self.base_dir / "Data" / f"{name}.mat"
        try:
            return scipy.io.loadmat(path)[name]
        except (OSError, ValueError, KeyError, NotImplementedError) as exc:
            raise ConfigError(f"{path}: not the {name} of the release ({type(exc).__name__}: {exc})") from None

    def entries(self) -> list[Entry]:
        names = [
            str(item[0][0]) if hasattr(item[0], "__len__") and not isinstance(item[0], str) else str(item[0])
            for item in self._mat("AllImages_release")
        ]
        mos = [float(v) for v in self._mat("AllMOS_release").ravel()]
        if len(names) != len(mos):
            raise ConfigError(f"{self.base_dir / 'Data'}: {len(names)} names but {len(mos)} MOS values")
        first = 0 if self.config["training_images"] else 7
        out = []
        for i in range(first, len(names)):
            path = self.images_dir / names[i]
            if not path.is_file() and (self.images_dir / "trainingImages" / names[i]).is_file():
                path = self.images_dir / "trainingImages" / names[i]
            out.append(Entry(path.relative_to(self.images_dir).as_posix(), path, mos[i]))
        return sorted(out, key=lambda e: e.name)


@hookimpl
def iqadef_register_datasets(register):
    register(LIVEChallenge)
