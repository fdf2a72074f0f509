"""Bad input through the command line, in a subprocess: one line naming the file/key and the fix, exit
status 2, no traceback, and no work done (issue 13, items 7, 8, 12). Each starts the CLI (a few seconds
of imports), hence ``slow``."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from repo_paths import REPO_ROOT

pytestmark = pytest.mark.slow

#: Runs the CLI with its address space capped at 2 GB above what the imports took, so a regression that
#: expands a huge grid fails at once with MemoryError instead of taking the machine's memory.
CAPPED_CLI = """
import re, resource, sys
import iqadef.cli, iqadef.config.registry, iqadef.core.plugins
iqadef.core.plugins.installed_plugins()
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(iqadef.cli.main(sys.argv[1:]))
"""


def cli(*args: str, cwd: Path, capped: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", CAPPED_CLI] if capped else [sys.executable, "-m", "iqadef"]
    env = {k: v for k, v in os.environ.items() if k != "IQADEF_STRICT_PLUGINS"}
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write(folder: Path, text: str) -> Path:
    path = folder / "registry.yaml"
    path.write_text(text)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="caps memory with numbers read from /proc (Linux)")
def test_a_small_registry_whose_sweep_is_two_hundred_million_cells(tmp_path):
    """1.3 KB of YAML, one sweep of 2x10^8 configurations: it used to exhaust memory while validating
    (MemoryError traceback); now it is counted, not expanded."""
    ten = lambda fmt: "[" + ", ".join(fmt.format(i) for i in range(10)) + "]"  # noqa: E731
    text = f"""dataset: {{images: builtin}}
output: out
metrics: [tiny-iqa]
attacks:
  - name: uap
    sweep:
      amplitude: {ten("0.{}5")}
      eps: {ten("{}5/1000")}
      lr: {ten("0.00{}5")}
      epochs: {ten("1{}")}
      batch_size: {ten("2{}")}
      train_seed: [{", ".join(str(seed) for seed in range(100))}]
      size: [{", ".join(str(side) for side in range(16, 36))}]
defences: [no-defence]
"""
    assert len(text) < 1400
    registry = write(tmp_path, text)
    done = cli("run", str(registry), cwd=tmp_path, capped=True, timeout=120)
    assert_one_line_error(
        done,
        "registry.yaml: the grid has 200,000,000 metric x attack x defence combinations "
        "per image (1 x 200,000,000 x 1), more than max_cells: 100,000",
        "the largest entry, attacks[0] (uap), expands to 200,000,000 (amplitude: 10 values x eps: "
        "10 values x lr: 10 values x epochs: 10 values x batch_size: 10 values x train_seed: 100 "
        "values x size: 20 values)",
        "raise `max_cells`",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, fragments",
    [
        (
            "metrics: [tiny-iqa]\nattacks: [fgsm]\nattacks: [ifgsm]\n",
            ["registry.yaml: line 5, column 1: invalid YAML: key 'attacks' appears twice (first at line 4)"],
        ),
        (
            "metrics: [tiny-iqa]\nattacks: [fgsm]\ndevice: meta\n",
            ["registry.yaml: device: 'meta' is not a device iqadef can run on; use auto, cpu, cuda, cuda:N or mps"],
        ),
        (
            "metrics: [{name: tiny-iqa, weights_path: retrained.pt}]\nattacks: [fgsm]\n",
            ["registry.yaml: metrics[0].weights_path: ", "retrained.pt does not exist", "remove `weights_path`"],
        ),
        (
            "metrics: [tiny-iqa]\nattacks: [{name: fgsm, sweep: {eps: [1/255, 2/255, 3/255]}}]\nmax_cells: 2\n",
            ["the grid has 3 metric x attack x defence combinations per image", "more than max_cells: 2"],
        ),
    ],
)
def test_registry_mistakes_stop_before_any_work(tmp_path, text, fragments):
    """Before, `device: meta` and a missing `weights_path` were found only after every cell had failed,
    and a duplicated key silently replaced the first."""
    registry = write(tmp_path, f"dataset: {{images: builtin}}\noutput: out\n{text}")
    assert_one_line_error(cli("run", str(registry), cwd=tmp_path), *fragments)
    assert not (tmp_path / "out").exists()


def test_a_png_given_as_the_mos_file(tmp_path):
    (tmp_path / "mos.csv").write_bytes(REPO_ROOT.joinpath("src/iqadef/data/images/coins.png").read_bytes())
    registry = write(
        tmp_path, "dataset: {images: builtin, mos: mos.csv}\noutput: out\nmetrics: [tiny-iqa]\nattacks: [fgsm]\n"
    )
    assert_one_line_error(
        cli("run", str(registry), "--limit", "1", cwd=tmp_path),
        "mos.csv is not a text file (it is a PNG image); give a CSV file",
    )


def test_utf16_mos_and_a_text_file_as_weights_in_one_run(tmp_path):
    """A UTF-16 MOS CSV (Excel's "Unicode text") is read; a text file given as FCN weights fails the FCN
    cells saying it is not a checkpoint (it said `KeyError: 101`); the other cells are computed."""
    text = "image,mos\nastronaut.png,3.5\nbrick.png,2.5\n"
    (tmp_path / "mos.csv").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    (tmp_path / "notes.txt").write_text("my notes\n")
    registry = write(
        tmp_path,
        "dataset: {images: builtin, mos: mos.csv}\noutput: out\nmetrics: [tiny-iqa]\n"
        "attacks: [fgsm]\ndefences: [no-defence, {name: fcn, weights_path: notes.txt}]\n",
    )
    done = cli("run", str(registry), "--limit", "1", "--no-report", "--no-progress", cwd=tmp_path, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    df = pd.read_csv(tmp_path / "out" / "results.csv").set_index("defence")
    assert df.loc["no-defence", "status"] == "ok" and df.loc["no-defence", "mos"] == 3.5
    fcn = df.loc["fcn[weights_path=notes.txt]"]
    assert fcn["status"] == "failed"
    assert "notes.txt is not a PyTorch checkpoint (a text file, starting 'my notes'" in fcn["error"]
