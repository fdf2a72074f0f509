"""The adaptive section of the report: each `X@mode` attack beside its non-adaptive twin `X`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from iqadef.report import ADAPTIVE_TITLE, adaptive_table, has_adaptive, split_adaptive_label, write_report

IMAGES = [f"img{i}" for i in range(4)]


def rows(attack, adaptive, defence, f_def_adv, failed=()):
    out = []
    for i, image in enumerate(IMAGES):
        ok = image not in failed
        out.append(
            {
                "image": image,
                "metric": "toy",
                "attack": attack,
                "defence": defence,
                "adaptive": adaptive,
                "status": "ok" if ok else "failed",
                "error": "" if ok else "boom",
                "f_clean": 50.0,
                "f_adv": 70.0,
                "f_def_clean": 50.0,
                "f_def_adv": f_def_adv + i if ok else np.nan,
                "mos": np.nan,
            }
        )
    return out


def table() -> pd.DataFrame:
    data = (
        rows("ifgsm", "none", "jpeg", 51.0)
        + rows("ifgsm", "none", "no-defence", 70.0)
        + rows("ifgsm@bpda", "bpda", "jpeg", 60.0, failed=("img3",))
        + rows("ifgsm@bpda", "bpda", "no-defence", 70.0)
        + rows("fgsm@bpda+eot,eot=4", "bpda+eot", "jpeg", 55.0)
    )
    return pd.DataFrame(data)


def test_labels_split_into_twin_and_mode():
    assert split_adaptive_label("ifgsm[eps=0.0392]@bpda+eot,eot=8") == ("ifgsm[eps=0.0392]", "bpda+eot,eot=8")
    assert split_adaptive_label("ifgsm@eot,eot=2") == ("ifgsm", "eot,eot=2")
    assert split_adaptive_label("ifgsm@bpda") == ("ifgsm", "bpda")
    assert split_adaptive_label("ifgsm") is None and split_adaptive_label("a@b") is None


def test_table_pairs_each_adaptive_attack_with_its_twin_on_common_images():
    out = adaptive_table(table())
    assert list(out[["attack", "adaptive", "defence"]].itertuples(index=False, name=None)) == [
        ("ifgsm", "bpda", "jpeg"),
        ("ifgsm", "bpda", "no-defence"),
        ("fgsm", "bpda+eot,eot=4", "jpeg"),
    ]
    jpeg = out.iloc[0]
    # img3 failed under the adaptive attack: both means over img0..img2
    assert jpeg["n_images"] == 3
    assert np.isclose(jpeg["gain_non_adaptive"], np.mean([1, 2, 3]) / 50)
    assert np.isclose(jpeg["gain_adaptive"], np.mean([10, 11, 12]) / 50)
    assert np.isclose(jpeg["gain_difference"], 9 / 50)
    assert np.isclose(jpeg["gain_difference_ci_low"], 9 / 50) and np.isclose(jpeg["gain_difference_ci_high"], 9 / 50)
    # rise: the signed move of the defended score over the metric's span (default range 0..1 without run.json)
    assert np.isclose(jpeg["rise_non_adaptive"], 2.0) and np.isclose(jpeg["rise_difference"], 9.0)
    info = {"metrics": {"toy": {"range": [0, 100], "higher_is_better": False}}}
    flipped = adaptive_table(table(), info).iloc[0]
    assert np.isclose(flipped["rise_adaptive"], -0.11) and np.isclose(flipped["gain_adaptive"], jpeg["gain_adaptive"])
    same = out.iloc[1]
    assert same["gain_difference"] == 0 and same["n_images"] == 4
    lonely = out.iloc[2]  # no plain fgsm in the run
    assert np.isnan(lonely["gain_non_adaptive"]) and np.isclose(lonely["gain_adaptive"], np.mean([5, 6, 7, 8]) / 50)


def test_no_adaptive_rows_no_table():
    plain = table()
    plain = plain[plain["adaptive"] == "none"]
    assert not has_adaptive(plain) and adaptive_table(plain).empty
    assert has_adaptive(table())
    assert has_adaptive(table().drop(columns=["adaptive"]))  # an older table: recognised by the labels


def test_report_has_the_section_only_for_adaptive_runs(tmp_path):
    info = {"metrics": {"toy": {"name": "toy", "range": [0, 100], "higher_is_better": True}}, "seed": 1}
    for name, frame in (("adaptive", table()), ("plain", table()[lambda d: d["adaptive"] == "none"])):
        run = tmp_path / name
        run.mkdir()
        frame.to_parquet(run / "results.parquet")
        (run / "run.json").write_text(json.dumps(info))
        written = write_report(run)
        md, page = written["markdown"].read_text(), written["html"].read_text()
        assert (ADAPTIVE_TITLE in md) == (name == "adaptive") == (ADAPTIVE_TITLE in page)
    md = (tmp_path / "adaptive" / "report.md").read_text()
    section = md.split(ADAPTIVE_TITLE)[1].split("\n## ")[0]
    assert (
        "| toy | jpeg | ifgsm | bpda | 3 | 0.04 | 0.22 | 0.18 [0.18, 0.18] | 0.02 | 0.11 | 0.09 [0.09, 0.09] |"
        in section
    )
