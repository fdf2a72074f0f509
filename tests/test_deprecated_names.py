"""Old public paths and names keep working for third-party code, with a DeprecationWarning; the package
itself uses only the new ones."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest
from repo_paths import REPO_ROOT

SRC = REPO_ROOT / "src"
ALIASES = {
    "iqadef.core.registry": "iqadef.config.registry",
    "iqadef.core.run": "iqadef.execute",
    "iqadef.core.scores": "iqadef.analysis.scores",
    "iqadef.core.precision": "iqadef.core.numerics",
    "iqadef.core.store": "iqadef.store.results",
    "iqadef.core.export": "iqadef.export",
}


@pytest.mark.parametrize("old,new", sorted(ALIASES.items()))
def test_an_old_module_path_is_the_new_module_with_a_warning(old, new):
    code = (
        f"import warnings\nwarnings.simplefilter('error')\ntry:\n    import {old}\nexcept DeprecationWarning as w:\n"
        f"    print('warned', w)\nwarnings.simplefilter('ignore')\nimport importlib, sys\n"
        f"print(importlib.import_module({old!r}) is importlib.import_module({new!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-1500:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("warned") and new in lines[0]
    assert lines[-1] == "True"


def test_the_old_plugin_manager_names_warn_and_answer():
    plugins = importlib.import_module("iqadef.core.plugins")
    with pytest.warns(DeprecationWarning, match="InstalledPlugins"):
        old = plugins.PluginRegistry
    assert old is plugins.InstalledPlugins
    with pytest.warns(DeprecationWarning, match="installed_plugins"):
        assert plugins.get_registry is plugins.installed_plugins


def test_no_module_of_the_package_imports_an_old_path():
    found = []
    for path in sorted((SRC / "iqadef").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if module in ALIASES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [
                f"{module}:{node.lineno} {n}" for n in names if any(n == a or n.startswith(a + ".") for a in ALIASES)
            ]
    assert found == []
