"""Each dataset plugin on a miniature written in the dataset's real layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from ds_helpers import image

from iqadef import ConfigError
from iqadef.core.dataset import parse_dataset


def parse(value, base, registry):
    return parse_dataset(value, base, registry, "reg.yaml: dataset")


def koniq(root, n=6):
    names = [f"{1000 + i}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        image(root / "1024x768" / name, i, fmt="JPEG")
        image(root / "512x384" / name, i, size=(12, 16), fmt="JPEG")
    header = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"
    rows = [f"{n},1,2,3,4,5,15,{1 + i / 2},0.5,{10 + i}" for i, n in enumerate(names)]
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join([header, *rows]) + "\n")
    sets = ["training", "training", "validation", "test", "test", "test"]
    (root / "koniq10k_distributions_sets.csv").write_text(
        "\n".join([header + ",set", *(f"{r},{s}" for r, s in zip(rows, sets))]) + "\n"
    )
    return names


def test_koniq10k_split_sample_and_mos_from_its_score_file(tmp_path, registry, data_home):
    names = koniq(data_home / "koniq10k")
    cfg = parse({"name": "koniq10k", "split": "test"}, tmp_path, registry)
    ds = cfg.open()
    assert [i.name for i in ds.items] == names[3:]
    assert [i.mos for i in ds.items] == [2.5, 3.0, 3.5] and ds.items[0].size == (24, 32)
    z = parse({"name": "koniq10k", "resolution": "512x384", "score": "MOS_zscore"}, tmp_path, registry).open()
    assert len(z) == 6 and z.items[0].mos == 10 and z.items[0].size == (12, 16)
    a = [i.name for i in parse({"name": "koniq10k", "sample": 3, "seed": 1}, tmp_path, registry).open().items]
    b = [i.name for i in parse({"name": "koniq10k", "sample": 3, "seed": 1}, tmp_path, registry).open().items]
    c = [i.name for i in parse({"name": "koniq10k", "sample": 3, "seed": 2}, tmp_path, registry).open().items]
    assert a == b == sorted(a) and len(set(a)) == 3 and set(a) <= set(names) and a != c
    with pytest.raises(ConfigError, match=r"dataset.sample: 4 is more than the 3 images of koniq10k \(split test\)"):
        parse({"name": "koniq10k", "split": "test", "sample": 4}, tmp_path, registry).open()


def test_a_missing_dataset_says_how_to_fetch_it(tmp_path, registry, data_home):
    with pytest.raises(
        ConfigError,
        match=r"reg.yaml: dataset: koniq10k is not in .*koniq10k \(missing 1024x768/, "
        r"koniq10k_scores_and_distributions.csv\); run `iqadef data fetch koniq10k`",
    ):
        parse({"name": "koniq10k"}, tmp_path, registry)
    with pytest.raises(
        ConfigError, match=r"dataset.split: 'tset' is not a split of koniq10k; one of all, train, val, test"
    ):
        parse({"name": "koniq10k", "split": "tset"}, tmp_path, registry)
    with pytest.raises(ConfigError, match=r"dataset.resolution: '640x480' is not allowed"):
        parse({"name": "koniq10k", "resolution": "640x480"}, tmp_path, registry)
    with pytest.raises(ConfigError, match=r"dataset.splt: unknown key for dataset 'koniq10k' \(did you mean 'split'"):
        parse({"name": "koniq10k", "splt": "test"}, tmp_path, registry)
    with pytest.raises(ConfigError, match=r"dataset.name: unknown dataset 'koniq'.*did you mean 'koniq10k'"):
        parse({"name": "koniq"}, tmp_path, registry)


def test_kadid10k_distorted_with_dmos_or_references(tmp_path, registry, data_home):
    root = data_home / "kadid10k" / "kadid10k"
    rows = []
    for r in (1, 2):
        image(root / "images" / f"I{r:02d}.png", r)
        for d in (1, 2):
            name = f"I{r:02d}_{d:02d}_01.png"
            image(root / "images" / name, 10 * r + d)
            rows.append(f"{name},I{r:02d}.png,{r + d / 10},0.1")
    (root / "dmos.csv").write_text("dist_img,ref_img,dmos,var\n" + "\n".join(rows) + "\n")
    ds = parse({"name": "kadid10k"}, tmp_path, registry).open()
    assert {i.name: i.mos for i in ds.items} == {
        "I01_01_01.png": 1.1,
        "I01_02_01.png": 1.2,
        "I02_01_01.png": 2.1,
        "I02_02_01.png": 2.2,
    }
    refs = parse({"name": "kadid10k", "images": "reference"}, tmp_path, registry).open()
    assert [i.name for i in refs.items] == ["I01.png", "I02.png"] and not refs.has_mos


def test_nips2017_dev_set_layout(tmp_path, registry, data_home):
    root = data_home / "nips2017"
    ids = ["0c7ac4a8c9dfa802", "a2d3d4c5b6e7f809"]
    for i, name in enumerate(ids):
        image(root / "images" / f"{name}.png", i, size=(29, 29))
    (root / "images.csv").write_text(
        "ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL\n"
        + "".join(f"{n},https://x/{n}.jpg,0,0,1,1,5,9,https://x,CC BY 2.0,A,https://a\n" for n in ids)
    )
    ds = parse("nips2017", tmp_path, registry).open()  # a plain name works when no such folder exists
    assert [i.name for i in ds.items] == [f"{n}.png" for n in ids] and not ds.has_mos


def test_livec_mat_files(tmp_path, registry, data_home):
    base = data_home / "livec" / "ChallengeDB_release"
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.JPG", "100.bmp"]
    for i, n in enumerate(names):
        folder = base / "Images" / ("trainingImages" if n.startswith("t") else "")
        image(folder / n, i, fmt="BMP" if n.endswith("bmp") else "JPEG")
    (base / "Data").mkdir(parents=True)
    cells = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cells[i, 0] = np.array([n])
    scipy.io.savemat(base / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    scipy.io.savemat(
        base / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[float(10 * i) for i in range(len(names))]])}
    )
    ds = parse({"name": "livec"}, tmp_path, registry).open()
    assert {i.name: i.mos for i in ds.items} == {"10.JPG": 70.0, "100.bmp": 80.0}
    full = parse({"name": "livec", "training_images": True}, tmp_path, registry).open()
    assert len(full) == 9 and "trainingImages/t1.bmp" in {i.name for i in full.items}


@pytest.mark.parametrize(
    "text, encoding",
    [
        ("image_name;MOS\na.png;3,5\nb.png;4\n", "utf-8"),
        ("Filename\tScore\na.png\t3.5\nb.png\t4\n", "utf-8-sig"),
        ("name,dmos,note\na.png,3.5,caf\u00e9\nb.png,4,x\n", "latin-1"),
    ],
)
def test_hand_made_mos_csv_forms(tmp_path, registry, text, encoding):
    folder = tmp_path / "imgs"
    image(folder / "a.png", 1)
    image(folder / "b.png", 2)
    (tmp_path / "mos.csv").write_bytes(text.encode(encoding))
    for value in ({"images": "imgs", "mos": "mos.csv"}, {"name": "folder", "images": "imgs", "mos": "mos.csv"}):
        ds = parse(value, tmp_path, registry).open()
        assert {i.name: i.mos for i in ds.items} == {"a.png": 3.5, "b.png": 4.0}
    sampled = parse({"images": "imgs", "mos": "mos.csv", "sample": 1}, tmp_path, registry).open()
    assert len(sampled) == 1 and sampled.items[0].mos in (3.5, 4.0)


def test_earlier_registry_forms_still_work(tmp_path, registry):
    image(tmp_path / "imgs" / "a.png")
    assert parse(None, tmp_path, registry).plugin.name == "builtin"
    assert parse("builtin", tmp_path, registry).plugin.name == "builtin"
    assert parse({"images": "builtin", "max_side": 64}, tmp_path, registry).max_side == 64
    assert parse("imgs", tmp_path, registry).images == tmp_path / "imgs"
    assert len(parse({"images": "imgs"}, tmp_path, registry).open()) == 1
    with pytest.raises(ConfigError, match=r"reg.yaml: dataset.images: .*nowhere is not a folder"):
        parse({"images": "nowhere"}, tmp_path, registry)
    with pytest.raises(ConfigError, match=r"reg.yaml: dataset.mos: .*m.csv does not exist"):
        parse({"images": "imgs", "mos": "m.csv"}, tmp_path, registry)
    with pytest.raises(ConfigError, match=r"dataset.root: dataset 'folder' takes no `root`|unknown key"):
        parse({"images": "imgs", "root": "x"}, tmp_path, registry)
