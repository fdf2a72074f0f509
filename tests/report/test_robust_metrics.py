"""A metric fine-tuned by ``iqadef train-robust`` is shown beside its original: run.json records the training,
the report correlates the two metrics' clean scores, compares each with MOS and sets their attacked gains side
by side (no training needed: a synthetic result table and run.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from iqadef.config.registry import load_run_config
from iqadef.plan.grid import run_info
from iqadef.report import write_report
from iqadef.report.robust_metrics import accuracy_table, metric_pairs, robustness_table

ORIGINAL, TUNED = "tiny-iqa", "tiny-iqa[weights_path=robust.pt]"
IMAGES = [f"img{i}.png" for i in range(6)]
F_ORIGINAL = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
F_TUNED = np.array([0.15, 0.35, 0.25, 0.45, 0.55, 0.65])  # img1 and img2 swapped in rank: Spearman 1 - 12/210
MOS = F_ORIGINAL * 10 + 1


def _info() -> dict:
    entry = {"name": "tiny-iqa", "range": [0.0, 1.0], "higher_is_better": True}
    return {
        "metrics": {
            ORIGINAL: entry,
            TUNED: dict(entry, trained={"method": "pgd-at", "images": 40, "weights": "robust.pt"}),
        },
        "attacks": ["fgsm", "pgd"],
        "defences": ["no-defence", "jpeg"],
        "defence_plugins": {
            "no-defence": {"name": "no-defence", "geometric": False},
            "jpeg": {"name": "jpeg", "geometric": False},
        },
        "seed": 0,
    }


def _table() -> pd.DataFrame:
    """Undefended normalised gains: original 0.3 (fgsm) and 0.2 (pgd), fine-tuned 0.1 and 0.05. The jpeg rows
    and a failed cell carry other values that must not count."""
    rows = []
    gains = {(ORIGINAL, "fgsm"): 0.3, (ORIGINAL, "pgd"): 0.2, (TUNED, "fgsm"): 0.1, (TUNED, "pgd"): 0.05}
    for metric, clean in ((ORIGINAL, F_ORIGINAL), (TUNED, F_TUNED)):
        for attack in ("fgsm", "pgd"):
            for defence in ("no-defence", "jpeg"):
                for image, f_x, mos in zip(IMAGES, clean, MOS):
                    f_adv = f_x + gains[(metric, attack)]
                    rows.append(
                        {
                            "metric": metric,
                            "attack": attack,
                            "defence": defence,
                            "image": image,
                            "status": "ok",
                            "f_clean": f_x,
                            "f_adv": f_adv,
                            "f_def_clean": f_x,
                            "f_def_adv": f_adv if defence == "no-defence" else f_x + 0.01,
                            "mos": mos,
                        }
                    )
    rows.append(dict(rows[0], image="broken.png", status="failed", f_clean=0.9, f_adv=0.0, f_def_adv=0.0))
    return pd.DataFrame(rows)


def test_pairs_are_fine_tuned_metrics_with_an_untrained_metric_of_the_same_plugin():
    info = _info()
    assert metric_pairs(info) == [(ORIGINAL, TUNED)]
    info["metrics"]["other"] = {"name": "other-iqa", "range": [0, 1], "trained": {"method": "pgd-at"}}
    assert metric_pairs(info) == [(ORIGINAL, TUNED)]  # no original of its plugin: not paired
    del info["metrics"][TUNED]["trained"]
    assert metric_pairs({"metrics": {k: v for k, v in info["metrics"].items() if k != "other"}}) == []


def test_accuracy_correlates_the_clean_scores_and_each_metric_with_mos():
    row = accuracy_table(_table(), _info()).iloc[0]
    assert (row["original"], row["fine_tuned"], row["method"], row["training_images"]) == (
        ORIGINAL,
        TUNED,
        "pgd-at",
        40,
    )
    assert row["n_images"] == 6  # the failed cell's image is not counted
    assert row["spearman_clean"] == pytest.approx(1 - 6 * 2 / (6 * 35))
    assert row["pearson_clean"] == pytest.approx(np.corrcoef(F_ORIGINAL, F_TUNED)[0, 1])
    assert row["srocc_mos_original"] == pytest.approx(1.0) and row["plcc_mos_original"] == pytest.approx(1.0)
    assert row["srocc_mos_fine_tuned"] == pytest.approx(1 - 6 * 2 / (6 * 35))
    assert row["plcc_mos_fine_tuned"] == pytest.approx(np.corrcoef(MOS, F_TUNED)[0, 1])


def test_without_mos_only_the_agreement_with_the_original_is_given():
    row = accuracy_table(_table().assign(mos=np.nan), _info()).iloc[0]
    assert np.isfinite(row["spearman_clean"]) and np.isnan(row["srocc_mos_original"])
    assert np.isnan(row["plcc_mos_fine_tuned"])


def test_robustness_sets_the_undefended_gains_side_by_side_with_the_worst_case():
    ranking = pd.DataFrame(
        {
            "rank": [1, 2, 1],
            "metric": [ORIGINAL, ORIGINAL, TUNED],
            "defence": ["jpeg", "no-defence", "no-defence"],
            "budget": ["linf 8/255"] * 3,
            "gain_worst": [0.01, 0.4, 0.15],
        }
    )
    table = robustness_table(_table(), _info(), ranking).set_index("attack")
    assert table.loc["fgsm", "norm_gain_original"] == pytest.approx(0.3)
    assert table.loc["fgsm", "norm_gain_fine_tuned"] == pytest.approx(0.1)
    assert table.loc["fgsm", "gain_change"] == pytest.approx(-0.2)
    assert table.loc["pgd", "gain_change"] == pytest.approx(-0.15)
    assert table.loc["fgsm", "n_images"] == 6
    worst = table.loc["worst case (verdict), linf 8/255"]
    assert (worst["norm_gain_original"], worst["norm_gain_fine_tuned"]) == pytest.approx((0.4, 0.15))
    assert list(robustness_table(_table(), _info())["attack"]) == ["fgsm", "pgd"]  # no verdict, no row


def test_the_section_is_in_the_report_only_with_a_pair(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _table().to_parquet(run_dir / "results.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps(_info()))
    written = write_report(run_dir)
    html, md = written["html"].read_text(), written["markdown"].read_text()
    assert "id='robust-metrics'" in html and "Fine-tuned metrics beside their originals" in html
    assert "pgd-at" in html and "spearman_clean" in html and "gain_change" in html
    assert "## Fine-tuned metrics beside their originals" in md and "-0.2" in md
    info = _info()
    del info["metrics"][TUNED]["trained"]
    (run_dir / "run.json").write_text(json.dumps(info))
    assert "id='robust-metrics'" not in write_report(run_dir)["html"].read_text()


def test_run_json_records_the_training_of_a_metric_whose_weights_have_a_train_robust_record(tmp_path, image_dir):
    weights = tmp_path / "robust.pt"
    weights.write_bytes(b"not loaded by run_info")
    images = [{"name": f"t{i}.png", "sha256": f"{i:064x}"} for i in range(3)]
    weights.with_suffix(".json").write_text(
        json.dumps(
            {"kind": "iqadef train-robust", "method": "trades", "metric": "tiny-iqa", "data": {"images": images}}
        )
    )
    other = tmp_path / "fcn_like.pt"  # a record of another trainer (no train-robust kind): not a fine-tuned metric
    other.write_bytes(b"x")
    other.with_suffix(".json").write_text(json.dumps({"data": {"images": images}}))
    path = tmp_path / "g.yaml"
    path.write_text(
        f"dataset: {{images: {image_dir}}}\nattacks: [fgsm]\ndefences: [no-defence]\n"
        f"metrics: [tiny-iqa, {{name: tiny-iqa, weights_path: {weights}}}, "
        f"{{name: tiny-iqa, weights_path: {other}}}]\n"
    )
    config = load_run_config(path)
    metrics = run_info(config, config.open_dataset())["metrics"]
    original, tuned, other_label = (m.label for m in config.metrics)
    assert "trained" not in metrics[original] and "trained" not in metrics[other_label]
    assert metrics[tuned]["trained"] == {"method": "trades", "images": 3, "weights": str(weights), "from": "tiny-iqa"}
    assert metric_pairs({"metrics": metrics}) == [(original, tuned)]  # the record names its original
    metrics[tuned]["trained"]["from"] = "not in this run"
    assert metric_pairs({"metrics": metrics}) == [(original, tuned), (other_label, tuned)]
