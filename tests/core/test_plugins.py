"""Plugin discovery: built-ins like third-party plugins, broken plugins skipped, strict mode, conflicts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iqadef import PluginError
from iqadef.cli import main
from iqadef.core.plugins import InstalledPlugins, PluginLoadWarning, reset_installed_plugins

GOOD = '''
from iqadef import Defence, hookimpl

class Halve(Defence):
    """Halves the image (test plugin)."""
    name = "{defence}"
    def purify(self, images, *, seed=None):
        return images * 0.5

@hookimpl
def iqadef_register_defences(register):
    register(Halve)
'''


CREATED: set[str] = set()


def make_dist(site: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution (dist-info + module) with an `iqadef` entry point."""
    CREATED.add(module)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[iqadef]\n{module} = {module}\n")


@pytest.fixture()
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("IQADEF_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("IQADEF_LOAD_PLUGINS", raising=False)
    yield site
    reset_installed_plugins()
    for module in CREATED:
        sys.modules.pop(module, None)


def test_builtins_register_through_the_same_hooks():
    registry = InstalledPlugins(entry_points=False)
    assert "no-defence" in registry.names("defences")
    info = registry.registration("defences", "no-defence").plugin
    assert info.builtin and info.distribution == "iqadef"
    assert info.name == "iqadef.plugins.defences.identity"


def test_third_party_plugin_is_found_through_its_entry_point(site):
    make_dist(site, "iqadef-plugin-halve", "halve_plugin", GOOD.format(defence="halve"))
    registry = InstalledPlugins()
    reg = registry.registration("defences", "halve")
    assert reg.plugin.distribution == "iqadef-plugin-halve" and reg.plugin.version == "1.2.3"


def test_broken_plugin_is_skipped_with_a_warning_and_others_still_work(site):
    make_dist(site, "iqadef-plugin-broken", "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    make_dist(site, "iqadef-plugin-halve", "halve_plugin", GOOD.format(defence="halve"))
    with pytest.warns(PluginLoadWarning, match="iqadef-plugin-broken.*ImportError: missing dependency xyz"):
        registry = InstalledPlugins()
    assert "halve" in registry.names("defences") and "no-defence" in registry.names("defences")
    assert any("iqadef-plugin-broken" in p for p in registry.problems)


def test_plugin_failing_in_its_register_hook_is_skipped(site):
    source = GOOD.format(defence="x") + "\n@hookimpl\ndef iqadef_register_attacks(register):\n    register(42)\n"
    make_dist(site, "iqadef-plugin-odd", "odd_plugin", source)
    with pytest.warns(PluginLoadWarning, match="iqadef-plugin-odd.*failed to register attacks"):
        registry = InstalledPlugins()
    assert "x" in registry.names("defences")


def test_strict_mode_makes_a_broken_plugin_fatal(site, monkeypatch):
    make_dist(site, "iqadef-plugin-broken", "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.setenv("IQADEF_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="iqadef-plugin-broken"):
        InstalledPlugins()


def test_strict_flag_on_the_cli(site, capsys):
    make_dist(site, "iqadef-plugin-broken", "broken_plugin", "raise ImportError('nope')\n")
    reset_installed_plugins()
    assert main(["--strict-plugins", "plugins", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "iqadef-plugin-broken" in err and "Traceback" not in err


def test_two_plugins_with_the_same_name_is_an_error_naming_both(site):
    make_dist(site, "iqadef-plugin-a", "plugin_a", GOOD.format(defence="same"))
    make_dist(site, "iqadef-plugin-b", "plugin_b", GOOD.format(defence="same"))
    with pytest.raises(PluginError) as info:
        InstalledPlugins()
    assert "iqadef-plugin-a" in str(info.value) and "iqadef-plugin-b" in str(info.value)


def test_load_plugins_env_selects_third_party_plugins(site, monkeypatch):
    make_dist(site, "iqadef-plugin-a", "plugin_a", GOOD.format(defence="a-def"))
    make_dist(site, "iqadef-plugin-b", "plugin_b", GOOD.format(defence="b-def"))
    monkeypatch.setenv("IQADEF_LOAD_PLUGINS", "iqadef-plugin-b")
    names = InstalledPlugins().names("defences")
    assert "b-def" in names and "a-def" not in names and "no-defence" in names


def test_plugins_json_lists_builtins(capsys):
    reset_installed_plugins()
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in data["plugins"]}
    assert "iqadef.plugins.defences.identity" in names
    assert any("ifgsm" in p["registers"].get("attacks", []) for p in data["plugins"])


@pytest.mark.parametrize(
    "source, shown",
    [
        ("import sys\nsys.exit(0)\n", "SystemExit(0)"),
        ("raise SystemExit(3)\n", "SystemExit(3)"),
        ("raise GeneratorExit('odd')\n", "GeneratorExit: odd"),
    ],
)
def test_a_plugin_exiting_at_import_is_a_broken_plugin(site, source, shown):
    """SystemExit at import used to end every command with status 0 and no output."""
    make_dist(site, "iqadef-plugin-exits", "exits_plugin", source)
    make_dist(site, "iqadef-plugin-halve", "halve_plugin", GOOD.format(defence="halve"))
    with pytest.warns(PluginLoadWarning, match=rf"iqadef-plugin-exits.*failed to load: {re.escape(shown)}"):
        registry = InstalledPlugins()
    assert "halve" in registry.names("defences") and "no-defence" in registry.names("defences")


def test_a_plugin_exiting_in_its_register_hook_is_skipped(site):
    source = GOOD.format(defence="x") + "\n@hookimpl\ndef iqadef_register_attacks(register):\n    raise SystemExit(0)\n"
    make_dist(site, "iqadef-plugin-odd", "odd_plugin", source)
    with pytest.warns(PluginLoadWarning, match=r"iqadef-plugin-odd.*failed to register attacks: SystemExit\(0\)"):
        registry = InstalledPlugins()
    assert "x" in registry.names("defences")


def test_a_plugin_exiting_at_import_is_fatal_in_strict_mode(site, monkeypatch):
    make_dist(site, "iqadef-plugin-exits", "exits_plugin", "raise SystemExit(0)\n")
    monkeypatch.setenv("IQADEF_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"iqadef-plugin-exits.*SystemExit\(0\).*strict plugin mode"):
        InstalledPlugins()


@pytest.mark.slow
def test_a_plugin_exiting_at_import_on_the_command_line(site):
    """Through the installed CLI in a subprocess: the exit status and stderr are what a user sees."""
    make_dist(site, "iqadef-plugin-exits", "exits_plugin", "import sys\nsys.exit(0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("IQADEF_STRICT_PLUGINS", None)
    listed = subprocess.run(
        [sys.executable, "-m", "iqadef", "plugins", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert any("iqadef-plugin-exits" in p and "SystemExit(0)" in p for p in report["problems"])
    assert any(p["name"] == "iqadef.plugins.defences.identity" for p in report["plugins"])
    assert "warning: plugin 'exits_plugin' from distribution 'iqadef-plugin-exits'" in listed.stderr
    strict = subprocess.run(
        [sys.executable, "-m", "iqadef", "--strict-plugins", "list", "defences"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert strict.returncode == 2 and strict.stdout == ""
    assert strict.stderr.startswith("error: plugin 'exits_plugin' from distribution 'iqadef-plugin-exits' failed")
    assert "Traceback" not in strict.stderr and len(strict.stderr.strip().splitlines()) == 1


# -- lazy registration (LazyPlugin): the built-ins' indexes and third-party plugins -------------------------
LAZY = """
from iqadef import LazyPlugin, hookimpl

@hookimpl
def iqadef_register_defences(register):
    register(LazyPlugin("{defence}", "{target}"))
"""


def _own_hooks(module) -> set[tuple]:
    """What a built-in module's own hooks register: (kind, name, "module:Class", help, summary)."""
    from iqadef.core.kinds import KINDS
    from iqadef.core.plugins import is_summary_score

    out = set()
    for kind, spec in KINDS.items():
        hook = getattr(module, spec.hook, None)
        found: list = []
        if hook is not None:
            hook(register=found.append)
        for cls in found:
            out.add(
                (
                    kind,
                    cls.name,
                    f"{cls.__module__}:{cls.__qualname__}",
                    getattr(cls, "help", "") if kind == "commands" else "",
                    kind == "scores" and is_summary_score(cls),
                )
            )
    return out


def test_the_builtin_indexes_register_exactly_what_the_modules_own_hooks_register():
    """The index of each kind's package names every built-in module's classes (a new module added without
    its index line, a renamed class or a changed command help shows here), attributed to its module."""
    import importlib
    import pkgutil

    from iqadef.core.plugins import BUILTIN_PACKAGES

    expected: set[tuple] = set()
    for package in BUILTIN_PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                expected |= _own_hooks(importlib.import_module(f"{package}.{info.name}"))
    registry = InstalledPlugins(entry_points=False, strict=True)
    indexed = set()
    for kind, table in registry.by_kind.items():
        for name, reg in table.items():
            assert reg.lazy and reg.plugin.builtin and reg.plugin.name == reg.entry.module, (kind, name)
            indexed.add((kind, name, reg.entry.target, reg.entry.help, reg.entry.summary))
    assert indexed == expected


def test_a_lazy_plugin_is_imported_on_first_use_and_checked(site):
    make_dist(site, "iqadef-plugin-halve", "halve_plugin", GOOD.format(defence="halve"))
    make_dist(site, "iqadef-plugin-lazy", "lazy_plugin", LAZY.format(defence="halve-lazy", target="halve_impl:Halve"))
    (site / "halve_impl.py").write_text(GOOD.format(defence="halve-lazy").split("@hookimpl")[0])
    CREATED.add("halve_impl")
    registry = InstalledPlugins()
    assert "halve-lazy" in registry.names("defences") and "halve_impl" not in sys.modules
    reg = registry.registration("defences", "halve-lazy")
    assert reg.plugin.distribution == "iqadef-plugin-lazy" and not reg.loaded
    assert registry.get("defences", "halve-lazy").__name__ == "Halve" and "halve_impl" in sys.modules


@pytest.mark.parametrize(
    "target, problem",
    [
        ("missing_module_xyz:Halve", "failed to import: ModuleNotFoundError"),
        ("halve_plugin:Halve", "does not match its registration: name 'halve', registered as 'other-name'"),
    ],
)
def test_a_broken_lazy_plugin_fails_where_used_and_is_left_out_of_the_list(site, monkeypatch, capsys, target, problem):
    make_dist(site, "iqadef-plugin-halve", "halve_plugin", GOOD.format(defence="halve"))
    make_dist(site, "iqadef-plugin-lazy", "lazy_plugin", LAZY.format(defence="other-name", target=target))
    registry = InstalledPlugins()
    with pytest.raises(PluginError, match=re.escape(problem)) as info:
        registry.get("defences", "other-name")
    assert "iqadef-plugin-lazy" in str(info.value)
    with pytest.warns(PluginLoadWarning, match=re.escape(problem)):
        listed = registry.describe("defences")
    assert "other-name" not in {d["name"] for d in listed} and "no-defence" in {d["name"] for d in listed}
    monkeypatch.setenv("IQADEF_STRICT_PLUGINS", "1")
    monkeypatch.setenv("IQADEF_LOAD_PLUGINS", "iqadef-plugin-halve,iqadef-plugin-lazy")  # these, not others installed
    reset_installed_plugins()
    assert main(["list", "defences"]) == 2
    err = capsys.readouterr().err
    assert "iqadef-plugin-lazy" in err and problem in err and "Traceback" not in err


def test_two_plugins_with_the_same_name_lazy_or_not_is_an_error_naming_both(site):
    make_dist(site, "iqadef-plugin-a", "plugin_a", GOOD.format(defence="no-defence"))
    with pytest.raises(PluginError, match=r"two plugins register the defence 'no-defence'") as info:
        InstalledPlugins()
    assert "iqadef.plugins.defences.identity" in str(info.value) and "iqadef-plugin-a" in str(info.value)
