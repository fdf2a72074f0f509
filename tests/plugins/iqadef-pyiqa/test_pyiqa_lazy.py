"""The pyiqa adapter registers lazily: its entry-point module imports neither torch nor pyiqa, so with it
installed ``iqadef --help`` and loading the plugins (``iqadef list``, ``iqadef report``) import neither; the
metric names come from the adapter's written-out list, which must equal what the installed pyiqa offers."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
ADAPTER_SRC = ROOT / "plugins" / "iqadef-pyiqa" / "src"
sys.path.insert(0, str(ADAPTER_SRC))  # this tree's adapter, whether or not a copy is installed

from iqadef_pyiqa import catalog  # noqa: E402
from iqadef_pyiqa.names import NAMES, PYIQA_VERSION, class_name  # noqa: E402

needs_pyiqa = pytest.mark.skipif(importlib.util.find_spec("pyiqa") is None, reason="pyiqa is not installed")
needs_entry_point = pytest.mark.skipif(
    not any(ep.value.startswith("iqadef_pyiqa") for ep in importlib.metadata.entry_points(group="iqadef")),
    reason="the iqadef-pyiqa distribution (its entry point) is not installed",
)


def test_every_metric_has_its_own_class_name():
    assert len({class_name(n) for n in NAMES}) == len(NAMES) == 69
    assert class_name("clipiqa+_vitL14_512") == "Pyiqa_clipiqa__vitL14_512"


@needs_pyiqa
def test_the_written_out_names_are_the_installed_pyiqas_no_reference_metrics():
    """The list equals pyiqa's own NR list (pyiqa.list_models), less the entries the catalogue leaves out
    (set scores, open ranges: catalog.skipped), in the order of pyiqa's configs."""
    import pyiqa

    assert catalog.pyiqa_version() == PYIQA_VERSION
    offered = set(pyiqa.list_models(metric_mode="NR")) - set(catalog.skipped())
    assert set(NAMES) == offered
    assert NAMES == tuple(e.pyiqa_name for e in catalog.entries())


def _modules_after(code: str, watched: tuple[str, ...]) -> tuple[list[str], str]:
    """(the ``watched`` modules imported by ``code``, its stdout), in a fresh interpreter with this tree's
    iqadef and adapter first on the path (the installed entry point names ``iqadef_pyiqa``)."""
    probe = code + f"\nimport sys\nprint(sorted(m for m in {watched!r} if m in sys.modules))\n"
    path = os.pathsep.join([str(ROOT / "src"), str(ADAPTER_SRC), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    return eval(lines[-1]), "\n".join(lines[:-1])  # a printed list of str


def _cli(argv: str) -> str:
    return (
        "import contextlib, io\nfrom iqadef.cli import main\nbuffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n    try:\n"
        f"        main({argv.split()!r})\n    except SystemExit:\n        pass\nprint(buffer.getvalue())\n"
    )


HEAVY = ("torch", "pyiqa", "iqadef_pyiqa.metrics")


@needs_pyiqa
@needs_entry_point
def test_help_with_the_adapter_imports_neither_torch_nor_pyiqa():
    imported, shown = _modules_after(_cli("--help"), HEAVY)
    assert imported == [] and "usage: iqadef" in shown


@needs_pyiqa
@needs_entry_point
def test_loading_the_plugins_registers_every_pyiqa_metric_without_torch():
    """What `iqadef list` and `iqadef report` do first: the 69 names are there, nothing heavy is imported."""
    code = (
        "from iqadef.core.plugins import InstalledPlugins\nplugins = InstalledPlugins(strict=True)\n"
        "print([n for n in plugins.names('metrics') if n.startswith('pyiqa-')])\n"
    )
    imported, shown = _modules_after(code, HEAVY)
    assert imported == []
    assert sorted(eval(shown.splitlines()[-1])) == sorted(f"pyiqa-{n}" for n in NAMES)


@needs_pyiqa
@needs_entry_point
def test_list_metrics_names_every_pyiqa_metric_and_a_class_loads_without_pyiqa():
    """`iqadef list metrics` imports the classes (torch), never pyiqa: it is imported when a metric is set up."""
    code = _cli("list metrics --json") + (
        "from iqadef.core.plugins import installed_plugins\n"
        "cls = installed_plugins().get('metrics', 'pyiqa-clipiqa+')\n"
        "print(cls.__module__, cls.__name__, cls.pyiqa_name, cls.higher_is_better)\n"
    )
    imported, shown = _modules_after(code, HEAVY)
    assert imported == ["iqadef_pyiqa.metrics", "torch"]
    assert shown.splitlines()[-1] == "iqadef_pyiqa.metrics Pyiqa_clipiqa_ clipiqa+ True"
    listed = [m["name"] for m in json.loads("\n".join(shown.splitlines()[:-1]))]
    assert sorted(n for n in listed if n.startswith("pyiqa-")) == sorted(f"pyiqa-{n}" for n in NAMES)
