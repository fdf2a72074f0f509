""" "Registry" means the registry file only; the plugin manager (``InstalledPlugins``) is ``plugins``.

The public functions that take the plugin manager still accept their old keyword ``registry=``, with a
DeprecationWarning naming ``plugins=``; the package itself names no parameter ``registry``."""

from __future__ import annotations

import ast
import inspect
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from repo_paths import REPO_ROOT

import iqadef
from iqadef.analysis.scores import aggregate
from iqadef.config.registry import load_run_config, parse_run_config
from iqadef.core.dataset import Dataset
from iqadef.core.plugins import InstalledPlugins
from iqadef.core.renamed import renamed_keyword
from iqadef.execute import Worker
from iqadef.execute import run_grid as execute_run_grid
from iqadef.export import export_run
from iqadef.report import write_report
from iqadef.report.tables import report_tables

PACKAGE = REPO_ROOT / "src" / "iqadef"
GRID = {"metrics": ["toy-metric"], "attacks": ["toy-sign"], "defences": ["toy-blur"]}


class Reached(Exception):
    """The plugin manager was consulted: the argument arrived as ``plugins``."""


class Spy(InstalledPlugins):
    """A plugin manager (it passes the API's type check) that raises :class:`Reached` on first use."""

    def __init__(self) -> None:  # no plugins loaded: any lookup says it was reached
        pass

    def __getattribute__(self, name: str):
        if name.startswith("__"):
            return object.__getattribute__(self, name)
        raise Reached(name)


def _config(tmp_path: Path, image_dir: Path, plugins: InstalledPlugins):
    return parse_run_config({**GRID, "dataset": str(image_dir), "output": "run"}, tmp_path / "r.yaml", plugins=plugins)


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as far as the report and the export read it before they consult the plugins."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame({"metric": ["m"], "attack": ["a"], "defence": ["jpeg"]}).to_csv(run_dir / "results.csv", index=False)
    info = {"defences": ["jpeg"], "registry": {**GRID}, "registry_file": str(tmp_path / "r.yaml")}
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def _yaml(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(GRID))  # JSON is YAML
    return path


#: name -> call(tmp_path, image_dir, toy plugins, **keyword) for every public function taking the plugin manager
CALLS = {
    "iqadef.parse_run_config": lambda t, i, toy, **kw: iqadef.parse_run_config(dict(GRID), t / "r.yaml", **kw),
    "iqadef.config.registry.load_run_config": lambda t, i, toy, **kw: load_run_config(_yaml(t), **kw),
    "iqadef.parse_dataset": lambda t, i, toy, **kw: iqadef.parse_dataset({"name": "folder", "images": "x"}, t, **kw),
    "iqadef.load_metric": lambda t, i, toy, **kw: iqadef.load_metric("toy-metric", device="cpu", **kw),
    "iqadef.load_attack": lambda t, i, toy, **kw: iqadef.load_attack("toy-sign", device="cpu", **kw),
    "iqadef.load_defence": lambda t, i, toy, **kw: iqadef.load_defence("toy-blur", device="cpu", **kw),
    "iqadef.run_grid": lambda t, i, toy, **kw: iqadef.run_grid(dict(GRID), out=t / "run", verbose=False, **kw),
    "iqadef.execute.run_grid": lambda t, i, toy, **kw: execute_run_grid(_config(t, i, toy), progress=False, **kw),
    "iqadef.execute.Worker": lambda t, i, toy, **kw: Worker(
        _config(t, i, toy), Dataset(i), t, lambda key: None, torch.device("cpu"), **kw
    ),
    "iqadef.export_run": lambda t, i, toy, **kw: export_run(_run_folder(t), t / "export", **kw),
    "iqadef.analysis.scores.aggregate": lambda t, i, toy, **kw: aggregate(pd.DataFrame(), {}, **kw),
    "iqadef.report.tables.report_tables": lambda t, i, toy, **kw: report_tables(pd.DataFrame(), {}, **kw),
    "iqadef.report.write_report": lambda t, i, toy, **kw: write_report(_run_folder(t), **kw),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_old_keyword_reaches_the_plugins_parameter_with_a_warning(name, tmp_path, image_dir, toy_registry):
    with pytest.warns(DeprecationWarning, match=r"registry= is now plugins="), pytest.raises(Reached):
        CALLS[name](tmp_path, image_dir, toy_registry, registry=Spy())


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_new_keyword_reaches_it_without_a_warning(name, tmp_path, image_dir, toy_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(Reached):
            CALLS[name](tmp_path, image_dir, toy_registry, plugins=Spy())


@pytest.mark.parametrize("name", sorted(CALLS))
def test_both_keywords_at_once_is_a_type_error(name, tmp_path, image_dir, toy_registry):
    with pytest.raises(TypeError, match="both registry= and plugins="):
        CALLS[name](tmp_path, image_dir, toy_registry, plugins=Spy(), registry=Spy())


def test_positional_calls_keep_working(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(Reached):
            iqadef.parse_dataset({"name": "folder", "images": "x"}, tmp_path, Spy())
        with pytest.raises(Reached):
            write_report(_run_folder(tmp_path), Spy())
        with pytest.raises(Reached):
            aggregate(pd.DataFrame(), {}, Spy())


def test_a_positional_value_and_the_old_keyword_is_a_type_error(tmp_path):
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="multiple values"):
        iqadef.parse_dataset("builtin", tmp_path, Spy(), registry=Spy())


def test_the_signature_shows_only_the_new_name():
    for function in (iqadef.load_metric, iqadef.parse_run_config, write_report, Worker):
        parameters = inspect.signature(function).parameters
        assert "plugins" in parameters and "registry" not in parameters, function


def test_every_top_level_function_taking_the_plugin_manager_accepts_the_old_keyword():
    """A public function added later with ``plugins`` joins :data:`CALLS` (and so takes ``registry=``)."""
    taking = set()
    for name in iqadef.__all__:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the old names of the plugin manager
            value = getattr(iqadef, name)
        if inspect.isfunction(value) and "plugins" in inspect.signature(value).parameters:
            taking.add(f"iqadef.{name}")
    assert taking and taking <= set(CALLS)


def test_the_warning_points_at_the_caller():
    @renamed_keyword("old", "new")
    def f(*, new=None):
        return new

    with pytest.warns(DeprecationWarning) as caught:
        assert f(old=3) == 3
    assert caught[0].filename == __file__


#: Parameters named ``registry`` that do hold the registry file (module:function -> why). None today.
REGISTRY_FILE_PARAMETERS: dict[str, str] = {}


def _registry_names(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, function or class, what) for each parameter, class field or ``self.`` attribute named registry."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            name = getattr(node, "name", "<lambda>")
            found += [(node.lineno, name, "parameter") for a in every if a is not None and a.arg == "registry"]
        if isinstance(node, ast.ClassDef):
            found += [
                (item.lineno, node.name, "field")
                for item in node.body
                if isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and item.target.id == "registry"
            ]
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "registry"
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            found.append((node.lineno, "self", "attribute"))
    return found


def test_no_parameter_of_the_package_is_named_registry_unless_it_is_the_registry_file():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for line, where, what in _registry_names(ast.parse(path.read_text(encoding="utf-8"))):
            if f"{module}:{where}" not in REGISTRY_FILE_PARAMETERS:
                found.append(f"{module}:{line} {where}: {what} `registry` (the plugin manager is `plugins`)")
    assert found == []


def test_the_scan_finds_each_form():
    code = "def f(registry): pass\ng = lambda *, registry=None: 0\nclass C:\n    registry: int\n"
    code += "    def m(self):\n        self.registry = 1\n"
    found = sorted((line, what) for line, _, what in _registry_names(ast.parse(code)))
    assert found == [(1, "parameter"), (2, "parameter"), (4, "field"), (6, "attribute")]
