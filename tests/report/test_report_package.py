"""The report page from its jinja2 templates: labels with HTML's special characters (issue 15).

report.html autoescapes every value the way ``html.escape`` does (quotes too), so a label can neither
break the page nor inject markup, and the page is byte for byte what it was before it came from
templates; report.md shows the labels as they are.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iqadef.report.figures import ReportFigures
from iqadef.report.files import ReportFiles, load_results
from iqadef.report.page import write_html, write_markdown
from iqadef.report.tables import report_tables

METRIC = "a<b&c\"'"
DEFENCE = "<i>jpeg</i>"
ERROR = "RuntimeError: <b>boom</b> & more"
RUN_NAME = "run&<x>"
IMAGES = ("i0", "i1", "i2", "i3")


def build_run(run_dir):
    """Four images, one attack, two defences (one failed cell); an example image for the gallery."""
    run_dir.mkdir()
    (run_dir / "examples").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(run_dir / "examples" / "x.png")
    rows = []
    for i, image in enumerate(IMAGES):
        for d, defence in enumerate(("no-defence", DEFENCE)):
            failed = defence == DEFENCE and image == "i3"
            f_x = 50.0 + i
            rows.append(
                {
                    "image": image,
                    "metric": METRIC,
                    "attack": "fgsm",
                    "defence": defence,
                    "status": "failed" if failed else "ok",
                    "error": ERROR if failed else "",
                    "f_clean": np.nan if failed else f_x,
                    "f_adv": np.nan if failed else f_x + 10,
                    "f_def_clean": np.nan if failed else f_x + d,
                    "f_def_adv": np.nan if failed else f_x + 10 - 6 * d + i % 2,
                    "mos": float(i),
                    "adv_path": "examples/x.png",
                    "example_path": "examples/x.png" if i == 0 else "",
                    "image_path": "examples/x.png",
                }
            )
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet")
    info = {
        "metrics": {METRIC: {"name": "toy", "range": [0, 100], "higher_is_better": True}},
        "seed": 3,
        "dataset": {"images": "/data/<imgs>", "mos": None},
    }
    (run_dir / "run.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("special") / RUN_NAME
    build_run(run_dir)
    df, run_info = load_results(run_dir)
    tables = report_tables(df, run_info)
    # the page alone (the figures are drawn elsewhere): one small PNG stands for each figure
    png = run_dir / "examples" / "x.png"
    figures = ReportFigures(gain=[(METRIC, png)], srocc=[(METRIC, png)], bins=[(METRIC, png)], examples=png)
    files = ReportFiles(run_dir)
    return (
        write_html(run_dir, run_info, tables, figures, files, df).read_text(encoding="utf-8"),
        write_markdown(run_dir, run_info, tables, figures, files, df).read_text(encoding="utf-8"),
    )


def test_labels_are_escaped_in_the_html_page_as_html_escape_does(pages):
    page, _ = pages
    metric = html.escape(METRIC)
    assert metric == "a&lt;b&amp;c&quot;&#x27;"  # quotes as &quot; and &#x27; (not markupsafe's &#34; &#39;)
    assert "<h1>iqadef report: run&amp;&lt;x&gt;</h1>" in page
    assert f"<tr><th>metric {metric}</th><td>range [0, 100], higher is better</td></tr>" in page
    assert "<tr><th>images</th><td>/data/&lt;imgs&gt;</td></tr>" in page
    # under each of Figures 3, 4 and 5: the metric's heading, then its embedded PNG
    assert page.count(f"<h3>{metric}</h3><img class='fig' alt='x.png' src='data:image/png;base64,") == 3
    # the image comparison's JSON: no "<", ">" or "&" that could end the script element; labels as they are
    raw_json = page.split("<script type='application/json' id='comparison-data'>")[1].split("</script>")[0]
    assert not set("<>&") & set(raw_json)
    cells = json.loads(raw_json)["cells"]
    assert {(c["m"], c["d"]) for c in cells} == {(METRIC, "no-defence"), (METRIC, DEFENCE)}
    assert "the &#x27;clean&#x27; row" in page  # a note with quotes
    # the tables: pandas escapes cells (quotes need none in element text), and nothing twice
    assert "<td>a&lt;b&amp;c\"'</td>" in page and "<td>&lt;i&gt;jpeg&lt;/i&gt;</td>" in page
    assert "<td>RuntimeError: &lt;b&gt;boom&lt;/b&gt; &amp; more</td>" in page
    for raw in (METRIC, DEFENCE, "<b>boom</b>", "<imgs>", RUN_NAME, "&amp;amp;", "&amp;lt;", "&#34;", "&#39;"):
        assert raw not in page, raw


def test_labels_appear_as_they_are_in_the_markdown_page(pages):
    _, md = pages
    assert md.startswith(
        f"# iqadef report: {RUN_NAME}\n\n- seed: 3\n- images: /data/<imgs>\n- MOS: none\n"
        f"- metric {METRIC}: range [0, 100], higher is better\n\n"
    )
    assert md.count(f"![{METRIC}](figures/x.png)\n") == 3
    assert f"| {METRIC} | fgsm | {DEFENCE} | 3 | 1 |" in md  # the summary row of the failed group
    assert f"| i3 | {METRIC} | fgsm | {DEFENCE} | {ERROR} |" in md
    assert "the 'clean' row" in md
    for escaped in ("&lt;", "&gt;", "&amp;", "&quot;", "&#x27;"):
        assert escaped not in md, escaped
    assert md.endswith("- Failed cells are excluded from every score and counted in n_failed.\n")
