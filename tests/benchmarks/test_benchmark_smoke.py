"""Smoke test of benchmarks/run_all.py: its quick mode runs end to end and writes valid JSON.

No timing assertions (the figures of a quick run on tiny inputs mean nothing); only that every
section ran, produced finite numbers of the right kind, and that resume did no model work.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
SCRIPT = ROOT / "benchmarks" / "run_all.py"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_quick_run_writes_valid_json(tmp_path):
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["quick"] is True
    assert results["torch_threads"] == 1
    assert results["loadavg_start"] is None or len(results["loadavg_start"]) == 3
    for section in ("overhead", "overhead_paper_size", "sharing", "batching", "memory", "peer", "resume", "ray_pool"):
        assert section in results, section

    overhead = results["overhead"]
    for key in ("floor_s", "iqadef_ifgsm_s", "ratio_vs_floor", "ratio_vs_plain_ifgsm"):
        assert _finite(overhead[key]) and overhead[key] > 0, key
    # iqadef's I-FGSM and the plain-torch loop stay in the same eps-ball (rounding may flip a few signs)
    assert overhead["max_abs_diff_vs_plain_ifgsm"] <= 2 * 10 / 255 + 1e-6

    sharing = results["sharing"]
    assert _finite(sharing["ratio_k_over_1"]) and len(sharing["defences"]) == sharing["k"]
    assert all(_finite(v) for v in sharing["defence_cost_s"].values())

    assert all(_finite(v["forward_images_per_s"]) for v in results["batching"]["cpu"].values())
    assert _finite(results["memory"]["ratio_large_over_small"])

    peer = results["peer"]
    if "skipped" not in peer:
        for name in ("fgsm", "pgd_linf"):
            assert _finite(peer[name]["art_over_iqadef"])
            assert _finite(peer[name]["max_abs_diff"])
        # the ART loss is the exact negative of iqadef's: one signed step gives the same image
        assert peer["fgsm"]["max_abs_diff"] == 0.0
        # a torch loop that updates its state as ART does reproduces ART's PGD exactly
        assert peer["pgd_linf"]["max_abs_diff_art_vs_torch_loop_in_art_order"] == 0.0

    pool = results["ray_pool"]
    if "skipped" not in pool:
        assert pool["tables_equal"] is True and _finite(pool["speedup"])

    resume = results["resume"]
    assert resume["recomputed_cells"] == 0
    assert all(v == 0 for v in resume["model_calls_on_resume"].values()), resume["model_calls_on_resume"]

    # the short table is printed
    assert "overhead" in proc.stdout and "resume" in proc.stdout
