"""Import cost at every CLI start: loading the built-in plugins must not pull in torchvision (its import
brings torch._dynamo, ~2 s; plugins import it when they build a network or transform), and ``import iqadef``
(what a plugin's ``from iqadef import Metric`` costs) must not load scipy.stats (~1 s). Built-ins register
lazily: ``iqadef --help`` imports no plugin module and no torch, ``iqadef list`` no torchvision."""

from __future__ import annotations

import os
import subprocess
import sys


def _modules_after(
    code: str, watched: tuple[str, ...] = ("torchvision", "scipy.stats"), env: dict[str, str] | None = None
) -> list[str]:
    probe = code + f"\nimport sys\nprint(sorted(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])  # a printed list of str


def test_loading_every_plugin_does_not_import_torchvision():
    assert "torchvision" not in _modules_after(
        "from iqadef.core.plugins import InstalledPlugins\nInstalledPlugins(strict=True)"
    )


def test_import_iqadef_loads_neither_torchvision_nor_scipy_stats():
    assert _modules_after("import iqadef") == []


def _cli(*argv: str) -> str:
    return f"from iqadef.cli import main\nfor args in {[a.split() for a in argv]!r}:\n    main(args)\n"


def test_import_iqadef_and_loading_the_plugins_import_no_torch():
    """Built-ins registered lazily: no plugin module (nor torch) until a class is used."""
    code = (
        "import iqadef\nfrom iqadef.core.plugins import InstalledPlugins\n"
        "InstalledPlugins(strict=True, entry_points=False)"
    )
    assert _modules_after(code, ("torch", "iqadef.plugins.defences.fcn", "iqadef.plugins.metrics.embedded")) == []


def test_help_imports_no_torch_and_shows_the_plugins_commands():
    """Only built-in plugins (an installed third-party plugin may import torch itself)."""
    code = (
        "import contextlib, io\nbuffer = io.StringIO()\nwith contextlib.redirect_stdout(buffer):\n"
        "    try:\n        "
        + _cli("--help").replace("\n", "\n        ").rstrip()
        + "\n    except SystemExit:\n        pass\n"
        "assert all(c in buffer.getvalue() for c in ('train-fcn', 'train-dms', 'data', 'export')), buffer.getvalue()\n"
    )
    assert _modules_after(code, ("torch", "torchvision"), env={"IQADEF_LOAD_PLUGINS": ""}) == []


def test_list_of_every_kind_does_not_import_torchvision():
    from iqadef.core.kinds import LISTED

    assert _modules_after(_cli(*(f"list {kind}" for kind in LISTED)), ("torchvision",)) == []
