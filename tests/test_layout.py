"""tests/ mirrors the code it tests: a reader looks for the tests of ``src/iqadef/execute/worker.py`` in
``tests/execute/``, for those of the ``jpeg`` defence in ``tests/plugins/defences/``.

Every folder under tests/ holding test code names what it tests:

- ``tests/<a>/<b>...`` mirrors ``src/iqadef/<a>/<b>...``: a package, or a module with several test files of
  its own (``tests/cli/`` for ``cli.py``, ``tests/execute/ray/`` for ``execute/ray.py``, ``tests/core/adaptive/``
  for ``core/adaptive.py``);
- ``tests/plugins/<name>/`` mirrors a built-in plugin kind (``src/iqadef/plugins/<name>``) or a plugin
  distribution kept in this repository (``plugins/<name>``, e.g. the pyiqa adapter);
- ``tests/benchmarks/`` holds the smoke tests of ``benchmarks/``;
- ``tests/support/`` holds the shared helpers (toy plugins, official-layout checkpoints, an HTTP server),
  put on sys.path once by tests/conftest.py; no other folder has a helper module or a sys.path hack;
- ``tests/reliability/`` is the one folder that mirrors no module, on purpose: its suites drive the whole
  program as a user does and break it from outside (SIGKILL mid-grid then resume, a full disk and damaged run
  folders, every command's bad input in a subprocess). Each crosses cli, config, execute, store and report at
  once, so no single module owns it; tests of one module's fault handling live with that module.

Tests of the package as a whole (import layers, import cost, packaging, public names, the API) sit at the top.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

TESTS = REPO_ROOT / "tests"
PACKAGE = REPO_ROOT / "src" / "iqadef"
#: Folders that mirror no module, and why (the module docstring says more).
UNMIRRORED = {
    ("support",): "shared helpers, on sys.path through tests/conftest.py",
    ("reliability",): "whole-program fault suites (kill and resume, full disk, bad input of every command)",
}


def mirrored(parts: tuple[str, ...], root: Path = REPO_ROOT) -> str | None:
    """What ``tests/<parts>`` mirrors (a path relative to the root), or None if nothing."""
    package = root / "src" / "iqadef"
    if parts == ("benchmarks",):
        return "benchmarks" if (root / "benchmarks").is_dir() else None
    if len(parts) == 2 and parts[0] == "plugins" and (root / "plugins" / parts[1]).is_dir():
        return f"plugins/{parts[1]}"
    target = package.joinpath(*parts)
    if (target / "__init__.py").is_file():
        return str(target.relative_to(root))
    module = target.with_suffix(".py")
    if module.is_file():
        return str(module.relative_to(root))
    return None


def folders_with_code() -> list[tuple[str, ...]]:
    """Every folder under tests/ that holds Python files (a stale __pycache__ of a moved folder is not one)."""
    folders = set()
    for path in TESTS.rglob("*.py"):
        rel = path.parent.relative_to(TESTS).parts
        if rel and not any(p.startswith((".", "__")) for p in rel):
            folders.add(rel)
    return sorted(folders)


@pytest.mark.parametrize("parts", [f for f in folders_with_code() if f not in UNMIRRORED], ids="/".join)
def test_every_test_folder_mirrors_the_code_it_tests(parts):
    assert mirrored(parts), (
        f"tests/{'/'.join(parts)}/ mirrors nothing under src/iqadef, plugins/ or benchmarks/: put its tests in the "
        "folder of the module they test (tests/test_layout.py explains the layout)"
    )


def test_the_rule_tells_a_mirror_from_a_folder_that_mirrors_nothing(tmp_path):
    (tmp_path / "src" / "iqadef" / "execute").mkdir(parents=True)
    (tmp_path / "src" / "iqadef" / "execute" / "__init__.py").write_text("")
    (tmp_path / "src" / "iqadef" / "execute" / "ray.py").write_text("")
    (tmp_path / "plugins" / "some-adapter").mkdir(parents=True)
    assert mirrored(("execute",), tmp_path) == "src/iqadef/execute"
    assert mirrored(("execute", "ray"), tmp_path) == "src/iqadef/execute/ray.py"
    assert mirrored(("plugins", "some-adapter"), tmp_path) == "plugins/some-adapter"
    assert mirrored(("widgets",), tmp_path) is None
    assert mirrored(("execute", "widgets"), tmp_path) is None
    assert mirrored(("benchmarks",), tmp_path) is None  # no benchmarks/ folder in this tree


def test_helpers_live_in_support_and_no_test_edits_sys_path_from_its_own_location():
    helpers, hacks = [], []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS)
        if rel.parts[0] == "support" or any(p.startswith((".", "__")) for p in rel.parts):
            continue
        if not path.name.startswith("test_") and path.name != "conftest.py":
            helpers.append(str(rel))
        if rel == Path("conftest.py"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"Path\(__file__\)(\.resolve\(\))?\.parents?\b", line):
                hacks.append(f"{rel}:{i}: {line.strip()}  (use repo_paths.REPO_ROOT)")
    assert not helpers, f"helper modules outside tests/support: {helpers}"
    assert not hacks, "paths computed from a test's own location:\n" + "\n".join(hacks)
