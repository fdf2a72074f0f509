"""Export a run, load the export back as a dataset and run on it: the same f(x_a) as in the run's table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from ds_helpers import image

from iqadef import IqadefError
from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.export import MARKER, export_run

GRID = """
dataset: {dataset}
output: {output}
batch_size: 2
metrics: [toy-metric]
attacks: [toy-sign]
defences: [no-defence, toy-blur]
"""


def run(tmp_path, registry, dataset: str, output: str):
    path = tmp_path / f"{output}.yaml"
    path.write_text(GRID.format(dataset=dataset, output=output))
    return run_grid(load_run_config(path, plugins=registry), progress=False, plugins=registry)


@pytest.mark.slow
def test_export_then_reimport_gives_the_same_f_of_x_a(tmp_path, registry):
    for i in range(3):
        image(tmp_path / "imgs" / f"im{i}.png", i)
    (tmp_path / "mos.csv").write_text("image,mos\nim0.png,1\nim1.png,2\nim2.png,3\n")
    assert run(tmp_path, registry, "{images: imgs, mos: mos.csv}", "run1").failed == 0
    table = pd.read_parquet(tmp_path / "run1" / "results.parquet")
    summary = export_run(tmp_path / "run1", tmp_path / "export", defended=True, plugins=registry)
    assert summary.adversarial == 3 and summary.defended == 6 and not summary.skipped
    index = pd.read_parquet(tmp_path / "export" / "index.parquet")
    assert set(pd.read_csv(tmp_path / "export" / "index.csv")["file"]) == set(index["file"])
    adv = index[index["kind"] == "adversarial"].set_index("image")
    assert sorted(adv["file"]) == [f"toy-metric/toy-sign/im{i}.png" for i in range(3)]
    readme = (tmp_path / "export" / "README.md").read_text()
    assert "x_a" in readme and "iqadef-export" in readme

    second = run(tmp_path, registry, "{name: iqadef-export, path: export}", "run2")
    assert second.failed == 0
    again = pd.read_parquet(tmp_path / "run2" / "results.parquet")
    clean_again = again[again["defence"] == "no-defence"].set_index("image")["f_clean"]
    stored = table[table["defence"] == "no-defence"].set_index("image")
    for name, row in adv.iterrows():
        assert clean_again[row["file"]] == pytest.approx(stored.loc[name, "f_adv"], rel=1e-6, abs=1e-6)
        assert row["f_adv"] == stored.loc[name, "f_adv"]
    assert set(again["mos"].dropna()) == {1.0, 2.0, 3.0}
    # the deterministic defence on the exported x_a gives the run's f(D(x_a))
    blur_again = again[again["defence"] == "toy-blur"].set_index("image")["f_def_clean"]
    blur = table[table["defence"] == "toy-blur"].set_index("image")["f_def_adv"]
    for name, row in adv.iterrows():
        assert blur_again[row["file"]] == pytest.approx(blur[name], rel=1e-5, abs=1e-6)

    # export again into the same folder: replaced; a foreign non-empty folder is refused
    export_run(tmp_path / "run1", tmp_path / "export", plugins=registry)
    assert not (tmp_path / "export" / "defended").exists() or not any((tmp_path / "export" / "defended").rglob("*.png"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(IqadefError, match=r"--out .*mine: the folder is not empty and is not an earlier iqadef export"):
        export_run(tmp_path / "run1", tmp_path / "mine", plugins=registry)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(IqadefError, match="a run folder"):
        export_run(tmp_path / "run1", tmp_path / "run2", plugins=registry)
    header = json.loads((tmp_path / "export" / MARKER).read_text().splitlines()[0])
    assert header["iqadef_export"] == 2
