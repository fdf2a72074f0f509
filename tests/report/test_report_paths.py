"""Bug 1 of issue 17: images of a relative ``dataset.images`` showed as "missing" in the report.

The run stores their paths relative to the folder it was started from; the report looked them up in the
run folder. It now finds them through run.json (the registry's folder + ``dataset.images``), wherever
``iqadef report`` is run from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.report import write_report


def comparison(page: str) -> dict:
    return json.loads(page.split("<script type='application/json' id='comparison-data'>")[1].split("</script>")[0])


def test_clean_images_of_a_relative_dataset_folder_are_found(tmp_path, image_dir, toy_registry, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(image_dir, project / "pictures")
    (project / "grid.yaml").write_text(
        f"dataset: {{images: pictures}}\noutput: {tmp_path / 'run'}\n"
        f"batch_size: 6\nexamples: 2\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence, toy-blur]\n"
    )
    monkeypatch.chdir(project)  # `iqadef run grid.yaml` from the project folder
    config = load_run_config(Path("grid.yaml"), plugins=toy_registry)
    assert not config.images.is_absolute()  # the case of the bug: the stored paths are relative
    summary = run_grid(config, plugins=toy_registry, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `iqadef report` from another folder
    page = write_report(summary.run_dir)["html"].read_text()
    data = comparison(page)
    assert len(data["cells"]) == 4  # 2 images x 1 attack x 2 defences
    clean = {c["x"] for c in data["cells"]}
    assert len(clean) == 2 and all(data["thumbs"][k].startswith("data:image/") for k in clean)
    assert "could not be read" not in page


def test_run_json_records_the_device_and_the_dataset_and_the_report_shows_the_device(tmp_path, image_dir, toy_registry):
    (tmp_path / "grid.yaml").write_text(
        f"dataset: {{images: {image_dir}}}\noutput: {tmp_path / 'run'}\n"
        f"device: cpu\nbatch_size: 6\nexamples: 1\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence]\n"
    )
    config = load_run_config(tmp_path / "grid.yaml", plugins=toy_registry)
    summary = run_grid(config, plugins=toy_registry, progress=False)
    info = json.loads((summary.run_dir / "run.json").read_text())
    assert info["device"] == "cpu"
    assert info["dataset"]["source"]["name"] == "folder"
    page = write_report(summary.run_dir)["html"].read_text()
    assert "(as configured)" not in page  # the device the run used, not the registry's setting
