"""The docs name what the code has: every column of results.csv, every class attribute of the contracts."""

from __future__ import annotations

import re

import pandas as pd
from repo_paths import REPO_ROOT
from toy_plugins import small_grid_config

from iqadef.execute import run_grid

DOCS = REPO_ROOT / "docs"
PAIRS = ("x_xa", "x_dx", "x_dxa", "xa_dxa", "dx_dxa")


def _documented(text: str) -> set[str]:
    names = set()
    for code in re.findall(r"`([^`]+)`", text):
        names.update(code.replace("<pair>", p) for p in PAIRS)
    return names


def test_every_column_of_results_csv_is_documented(tmp_path, image_dir, toy_registry):
    config = small_grid_config(tmp_path, image_dir, toy_registry, "run")
    summary = run_grid(config, progress=False, plugins=toy_registry, limit=2)
    columns = list(pd.read_csv(summary.files["results.csv"]).columns)
    missing = [c for c in columns if c not in _documented((DOCS / "results.md").read_text())]
    assert not missing, f"docs/results.md does not document {missing}"


def test_plugins_md_states_every_contract_attribute():
    text = (DOCS / "plugins.md").read_text()
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \| `?(?:Metric|Attack|Defence|all)", text, re.M)}
    assert {
        "range",
        "higher_is_better",
        "input_policy",
        "randomized",
        "differentiable",
        "preserves_size",
        "norm",
        "black_box",
        "name",
        "version",
        "params",
        "weights",
    } <= rows
