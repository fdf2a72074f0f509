"""The report's light path: ``iqadef report`` imports no torch (the contracts, the plugin modules and the
per-image scores stay unimported), and example thumbnails are reused by content across reports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from repo_paths import REPO_ROOT

from iqadef.config.registry import load_run_config
from iqadef.execute import run_grid
from iqadef.report import write_report
from iqadef.report.figures import THUMBNAIL_SIZE, ThumbnailCache

SRC = REPO_ROOT / "src"


def comparison(page: str) -> dict:
    return json.loads(page.split("<script type='application/json' id='comparison-data'>")[1].split("</script>")[0])


@pytest.fixture()
def run_dir(tmp_path, image_dir, toy_registry) -> Path:
    (tmp_path / "grid.yaml").write_text(
        f"dataset: {{images: {image_dir}}}\noutput: {tmp_path / 'run'}\n"
        f"device: cpu\nbatch_size: 6\nexamples: 2\nmetrics: [toy-metric]\n"
        f"attacks: [toy-sign]\ndefences: [no-defence, toy-blur]\n"
    )
    config = load_run_config(tmp_path / "grid.yaml", plugins=toy_registry)
    return run_grid(config, plugins=toy_registry, progress=False).run_dir


def test_iqadef_report_in_a_subprocess_imports_no_torch(run_dir):
    """Nor pyplot: the figures are matplotlib ``Figure`` objects on the Agg canvas (pyplot's import and its
    global figure manager cost time and a backend choice)."""
    probe = (
        "import sys\nfrom iqadef.cli import main\n"
        f"code = main(['report', {str(run_dir)!r}])\n"
        "print(code, sorted(m for m in ('torch', 'torchvision', 'matplotlib.pyplot') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "IQADEF_LOAD_PLUGINS": ""}  # built-ins only
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    page = (run_dir / "report.html").read_text()
    assert "srocc" in page.lower() or "SROCC" in page  # the summary scores were computed all the same


def _cached(run_dir: Path) -> dict[str, str]:
    return json.loads((run_dir / ThumbnailCache.FILE).read_text())["thumbnails"]


def _key(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_thumbnails_are_reused_by_content_and_a_changed_image_gets_a_new_one(run_dir):
    first = comparison(write_report(run_dir)["html"].read_text())
    cached = _cached(run_dir)
    examples = sorted((run_dir / "examples").rglob("*.png"))
    assert examples and len(cached) >= 2
    assert set(first["thumbs"]) - {""} == set(cached.values())  # every thumbnail shown is cached, by content
    kept, changed = examples[0], examples[-1]
    (kept_key,) = [k for k in cached if k.startswith(_key(kept) + f":{THUMBNAIL_SIZE}:")]
    old_changed = [v for k, v in cached.items() if k.startswith(_key(changed) + ":")]
    # a marked entry: shown only if the report takes the unchanged image's thumbnail from the cache
    marker = "data:image/webp;base64,UkVVU0VE"
    cached[kept_key] = marker
    (run_dir / ThumbnailCache.FILE).write_text(json.dumps({"version": 1, "thumbnails": cached}))
    with Image.open(changed) as im:
        pixels = 255 - np.asarray(im.convert("RGB"))
    Image.fromarray(pixels).save(changed)  # the same file name, other pixels

    second = comparison(write_report(run_dir)["html"].read_text())
    assert marker in second["thumbs"]  # cache hit for the unchanged file
    fresh = [v for k, v in _cached(run_dir).items() if k.startswith(_key(changed) + ":")]
    assert len(fresh) == 1 and fresh != old_changed and fresh[0] != marker  # a miss: made anew from the new bytes
    assert fresh[0] in second["thumbs"]


def test_a_damaged_thumbnail_cache_is_ignored(run_dir):
    write_report(run_dir)
    good = _cached(run_dir)
    (run_dir / ThumbnailCache.FILE).write_text("{not json")
    page = comparison(write_report(run_dir)["html"].read_text())
    assert _cached(run_dir) == good and set(page["thumbs"]) - {""} == set(good.values())
