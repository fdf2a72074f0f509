"""Import cost at every CLI start: loading the built-in plugins must not pull in torchvision (its import
brings torch._dynamo, ~2 s; plugins import it when they build a network or transform), and ``import iqadef``
(what a plugin's ``from iqadef import Metric`` costs) must not load scipy.stats (~1 s)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint(sorted(m for m in ('torchvision', 'scipy.stats') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])  # a printed list of str


def test_loading_every_plugin_does_not_import_torchvision():
    assert "torchvision" not in _modules_after("from iqadef.core.plugins import PluginRegistry\n"
                                               "PluginRegistry(strict=True)")


def test_import_iqadef_loads_neither_torchvision_nor_scipy_stats():
    assert _modules_after("import iqadef") == []
