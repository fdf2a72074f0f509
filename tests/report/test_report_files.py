"""The report's files: one figure file per exact metric label (issue 13, item 4)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd

from iqadef.report import figure_file_name, write_report
from iqadef.report.figures import png_data_uri

TWINS = ("lin[weights_path=a b.pt]", "lin[weights_path=a_b.pt]")  # the same once made a file name


def table(metrics: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for m, metric in enumerate(metrics):
        for i in range(4):
            for d, defence in enumerate(("no-defence", "jpeg")):
                f_x = 50.0 + i
                rows.append(
                    {
                        "image": f"i{i}",
                        "metric": metric,
                        "attack": "fgsm",
                        "defence": defence,
                        "status": "ok",
                        "error": "",
                        "f_clean": f_x,
                        "f_adv": f_x + 10,
                        "f_def_clean": f_x + d,
                        "f_def_adv": f_x + 10 - (5 + 3 * m) * d + i % 2,
                        "mos": float(i),
                        "adv_path": "",
                        "example_path": "",
                        "image_path": "",
                    }
                )
    return pd.DataFrame(rows)


def embedded_figures(html: str, section: str) -> dict[str, bytes]:
    """Metric label -> PNG bytes of the figures under one heading of report.html."""
    part = html.split(f"<h2>{section}")[1].split("<h2>")[0]
    found = re.findall(r"<h3>(.*?)</h3><img class='fig' alt='[^']*' src='data:image/png;base64,([^']+)'>", part)
    return {label: base64.b64decode(data) for label, data in found}


def test_labels_that_differ_only_in_characters_a_file_name_cannot_hold_get_their_own_figures(tmp_path):
    table(TWINS).to_csv(tmp_path / "results.csv", index=False)
    written = write_report(tmp_path)
    names = {label: figure_file_name("gain_heatmap", label) for label in TWINS}
    assert len(set(names.values())) == 2
    for label, name in names.items():
        assert (tmp_path / "figures" / name).is_file(), label
    html = written["html"].read_text()
    shown = embedded_figures(html.replace("&#x27;", "'"), "Figure 3")
    assert set(shown) == set(TWINS)
    assert shown[TWINS[0]] != shown[TWINS[1]]  # each metric shows its own heatmap
    for label, name in names.items():  # the page embeds a palette copy of that very file
        assert shown[label] == base64.b64decode(png_data_uri(tmp_path / "figures" / name).split(",")[1])
    md = written["markdown"].read_text()
    for label, name in names.items():
        assert f"![{label}](figures/{name})" in md
    # each twin's figure is the one a report of that metric alone draws
    alone = tmp_path / "alone"
    alone.mkdir()
    table(TWINS).query("metric == @TWINS[1]").to_csv(alone / "results.csv", index=False)
    write_report(alone)
    assert base64.b64decode(png_data_uri(alone / "figures" / names[TWINS[1]]).split(",")[1]) == shown[TWINS[1]]


def test_figure_names_stay_valid_file_names():
    long_label = "metric[" + ",".join(f"p{i}=/some/long/path/{i}.pt" for i in range(40)) + "]"
    name = figure_file_name("srocc_heatmap", long_label)
    assert len(name.encode()) < 120 and re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert figure_file_name("gain_bins", "A.pt") != figure_file_name("gain_bins", "a.pt")  # case-insensitive disks
    assert np.unique([figure_file_name("gain_heatmap", s) for s in ("a/b", "a\\b", "a:b", "a b", "a_b")]).size == 5
