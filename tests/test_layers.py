"""The import graph of ``src/iqadef``: no circle, and every import goes to the same or a lower layer.

Every import counts: at module level, inside functions, relative and absolute; only imports under
``if TYPE_CHECKING:`` are left out (they never run). A module added later must be placed in :data:`LAYERS`
(the test says so). An import inside a function is allowed only where :data:`DEFERRED` (modules of the
package) or :data:`DEFERRED_THIRD_PARTY` (other distributions) gives a reason: import cost or an optional
dependency. Built-in plugins import the package root ``iqadef``, private modules (``_name``) of their own
kind and what :data:`PLUGIN_ALLOWED` lists (what is not yet exported from ``iqadef``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from repo_paths import REPO_ROOT

ROOT = REPO_ROOT
SRC = ROOT / "src"
PACKAGE = SRC / "iqadef"

#: Lowest first. A module may import modules of its own layer (no circle) and of the layers below.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "leaves",
        (
            "iqadef._version",
            "iqadef.core.errors",
            "iqadef.core.suggest",
            "iqadef.core.files",
            "iqadef.core.devices",
            "iqadef.core.sniff",
            "iqadef.core.renamed",
        ),
    ),
    # declarative parameters: used by every plugin kind and by the dataset plugins' contract
    ("parameters", ("iqadef.core.params",)),
    # files in, below the contract: base.Plugin.identity() fingerprints weight files (weights), kinds names
    # DatasetPlugin (dataset); neither imports the contract
    ("inputs", ("iqadef.core.fetch", "iqadef.core.weights", "iqadef.core.dataset")),
    # the rest of core/: what a plugin is (base classes, hooks, kinds, the plugin manager, certificates)
    ("contract", ("iqadef.core", "iqadef.core.*")),
    # the flow's folders, lowest first: a run writes the store; analysis and the report read it; the
    # registry file is parsed into plugins (config), planned into units (plan) and executed (execute)
    ("store", ("iqadef.store", "iqadef.store.*")),
    ("analysis", ("iqadef.analysis", "iqadef.analysis.*")),
    ("report", ("iqadef.report", "iqadef.report.*")),
    ("config", ("iqadef.config", "iqadef.config.*")),
    ("plan", ("iqadef.plan", "iqadef.plan.*")),
    ("execute", ("iqadef.execute", "iqadef.execute.*")),
    ("api", ("iqadef.api", "iqadef.export")),
    ("package root", ("iqadef",)),
    ("plugins", ("iqadef.plugins", "iqadef.plugins.*")),
    ("cli", ("iqadef.cli", "iqadef.__main__")),
)

_CLI_START = "CLI start: loaded only by the subcommand that runs it, so `iqadef --help` and `iqadef list` stay fast"
#: Imports of package modules inside functions, (importer, imported) -> why not at module level.
DEFERRED: dict[tuple[str, str], str] = {
    **{
        ("iqadef", module): "cost: the package root's lazy names (`_LAZY`): `from iqadef import Metric` (every "
        "plugin) loads neither pandas, scipy nor the run stack; these load on first use"
        for module in (
            "iqadef.api",
            "iqadef.analysis.scores",
            "iqadef.core.plugins",
            "iqadef.export",
            "iqadef.config.registry",
            "iqadef.plan.trained",
        )
    },
    **{
        ("iqadef", module): "cost: `import iqadef` (the command line, the report, a plugin index's `from iqadef "
        "import LazyPlugin`) imports no torch; the contracts and the other names that need it "
        "load on first use (`_LAZY`)"
        for module in (
            "iqadef.core.base",
            "iqadef.core.cells",
            "iqadef.core.dataset",
            "iqadef.core.devices",
            "iqadef.core.lipschitz",
            "iqadef.core.query",
            "iqadef.core.smoothing",
            "iqadef.core.weights",
        )
    },
    ("iqadef.core.contract", "iqadef.core.numerics"): "cost: torch; only loading a plugin's networks applies the "
    "run's precision",
    ("iqadef.core.contract", "iqadef.core.weights"): "cost: torch; only a plugin with weight files fingerprints "
    "them (a summary score in the report has none)",
    ("iqadef.api", "iqadef.execute"): "cost: load_metric/load_attack need no runner (worker, store, pandas)",
    ("iqadef.export", "iqadef.core.plugins"): "cost: the export dataset plugin imports this module for its "
    "marker at every plugin load; only `iqadef export` needs the "
    "plugins and the run read back",
    ("iqadef.export", "iqadef.execute.recorded"): "cost: as above (the registry, the dataset, the store)",
    ("iqadef.report.glance", "iqadef.core.plugins"): "only for runs written before run.json recorded its "
    "defences' plugins: their `geometric` flags are looked "
    "up in the installed plugins (loads every plugin)",
    ("iqadef.api", "iqadef.report"): "cost: only run_grid(report=True) writes the report (jinja2, matplotlib)",
    ("iqadef.export", "iqadef.store.artifacts"): "cost: only --defended re-reads images (torch)",
    ("iqadef.execute.driver", "iqadef.report"): "cost: `iqadef plan --measure` imports the driver without "
    "the report stack (jinja2, the page); a run loads it for "
    "its closing summary table",
    ("iqadef.execute.driver", "iqadef.report.verdict_section"): "cost: as the report above; only a "
    "`protocol:` run prints its verdict",
    ("iqadef.execute.executors", "iqadef.execute.ray"): "optional dependency: only `executor: ray` needs Ray",
    ("iqadef.cli", "iqadef.core.dataset"): "the warning printer imports the warning classes where it runs, "
    "with those of scores and store (scipy, pandas)",
    **{
        ("iqadef.cli", module): _CLI_START
        for module in (
            "iqadef.core.fetch",
            "iqadef.core.plugins",
            "iqadef.config.registry",
            "iqadef.report.verdict_section",
            "iqadef.report.console_summary",
            "iqadef.report.files",
            "iqadef.execute.progress",
            "iqadef.report",
            "iqadef.execute",
            "iqadef.execute.driver",
            "iqadef.plan.grid",
            "iqadef.execute.verify",
            "iqadef.analysis.scores",
            "iqadef.store.results",
            "iqadef.core.weights",
        )
    },
}

#: Distributions imported inside functions (by top-level name) -> why.
DEFERRED_THIRD_PARTY: dict[str, str] = {
    "torchvision": "cost: its import brings torch._dynamo (~2 s); plugins import it when they build a network",
    "scipy": "cost: scipy.stats (~1 s) only where a statistic is computed",
    "matplotlib": "cost: only when a figure is drawn",
    "rich": "cost: CLI start; tables and progress bars only when shown",
    "pandas": "cost: the export dataset reads its index only when used",
    "tqdm": "cost: only when a download shows a progress bar",
    "kornia": "cost: only the JPEG codec's resampling needs it",
    "PIL": "cost: only where a PNG is checked or an image drawn (store, report)",
    "ray": "optional dependency: `pip install iqadef[ray]`",
    "diffusers": "optional weights stack: DiffPure's UNet and scheduler, built when the defence loads",
    "huggingface_hub": "optional weights stack: DiffPure's snapshot download",
    "torch": "cost: `iqadef export` without --defended, and the report (core.contract, the summary scores), "
    "need no torch",
    "yaml": "cost: the data command reads YAML only when asked for it",
    "numpy": "the numpy scalar types are allow-listed for torch.load only when a checkpoint needs them",
}

#: Package modules that built-in plugins may import besides ``iqadef``: not yet exported from the package root.
PLUGIN_ALLOWED: dict[str, str] = {}
#: Public plugin modules that other built-in plugins build on.
PLUGIN_SIBLINGS: dict[tuple[str, str], str] = {
    ("iqadef.plugins.attacks.mifgsm", "iqadef.plugins.attacks.ifgsm"): "MI-FGSM is I-FGSM with momentum",
    ("iqadef.plugins.defences.diffpure_unsharp", "iqadef.plugins.defences.diffpure"): "DiffPure, then unsharp",
    **{
        (f"iqadef.plugins.attacks.{m}", "iqadef.plugins.attacks.uap"): "trained attacks share UAP's cached, "
        "resumable training (TrainedAttack) and its image helpers"
        for m in ("cnn_attack", "cumulative_uap", "generative_uap")
    },
    ("iqadef.plugins.certified._diffusion", "iqadef.plugins.defences.diffpure"): "DDRS and DensePure denoise "
    "with DiffPure's model",
    ("iqadef.plugins.certified.drs", "iqadef.plugins.certified.dms_iqa"): "DRS smooths after dms-iqa's denoiser",
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    deferred: bool  # inside a function (runs when called, not on import)

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.imported}" + (" (in a function)" if self.deferred else "")


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, deferred: bool = False):
    """Every import statement under ``node`` with whether it runs inside a function; TYPE_CHECKING blocks
    are skipped (their ``else:`` is not)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), deferred)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, deferred
        yield from _imports(child, deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def scan(src: Path, package_dir: Path) -> tuple[list[Edge], list[tuple[str, int, str]]]:
    """The edges between modules under ``package_dir``, and the imports inside functions of anything else
    (module, line, top-level name).

    ``from M import n`` needs the submodule ``M.n`` when there is one, else ``M`` (for its attribute ``n``);
    ``import a.b`` needs ``a.b``. Importing a submodule also runs its parent packages; those implicit edges
    are not counted (a package's ``__init__`` must stay light instead).
    """
    paths = {module_name(p, src): p for p in sorted(package_dir.rglob("*.py"))}
    edges: list[Edge] = []
    outside: list[tuple[str, int, str]] = []
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, deferred in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                needed = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                needed = [f"{module}.{a.name}" if f"{module}.{a.name}" in paths else module for a in node.names]
            for target in needed:
                if target in paths:
                    if target != name:
                        edges.append(Edge(name, target, node.lineno, deferred))
                elif deferred and not (isinstance(node, ast.ImportFrom) and node.level):
                    outside.append((name, node.lineno, target.split(".")[0]))
    return edges, outside


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def graph_of(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    return graph


def layer_of(module: str) -> int | None:
    for level, (_, patterns) in enumerate(LAYERS):
        if any(fnmatchcase(module, p) for p in patterns):
            return level
    return None


def _is_plugin(module: str) -> bool:
    return module.startswith("iqadef.plugins.")


def lazy_edges() -> list[Edge]:
    """The package root's names loaded on first use (``_LAZY`` in ``iqadef/__init__.py``): imports too."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    modules = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("iqadef.")
    }
    return [Edge("iqadef", m, 0, True) for m in sorted(modules)]


EDGES, OUTSIDE = scan(SRC, PACKAGE)
EDGES += lazy_edges()
MODULES = {module_name(p, SRC) for p in PACKAGE.rglob("*.py")}


def test_the_scan_sees_the_package():
    pairs = {(e.importer, e.imported) for e in EDGES}
    assert ("iqadef.report.page", "iqadef.report.tables") in pairs
    assert ("iqadef.execute.driver", "iqadef.report") in pairs  # inside a function
    assert len(MODULES) > 100 and len(EDGES) > 300


def test_no_import_circle_counting_every_import():
    assert circles(graph_of(EDGES)) == []


def test_every_module_has_a_layer():
    assert sorted(m for m in MODULES if layer_of(m) is None) == [], "add the module to LAYERS in this file"


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [
        f"{e} ({LAYERS[layer_of(e.importer)][0]} -> {LAYERS[layer_of(e.imported)][0]})"
        for e in EDGES
        if layer_of(e.imported) > layer_of(e.importer)
    ]
    assert upward == []


def test_imports_inside_functions_are_listed_with_a_reason():
    found = {(e.importer, e.imported) for e in EDGES if e.deferred}
    assert sorted(found - DEFERRED.keys()) == [], "import at module level, or add the edge to DEFERRED with its reason"
    assert sorted(DEFERRED.keys() - found) == [], "stale DEFERRED entries: remove them"
    module_level = {(e.importer, e.imported) for e in EDGES if not e.deferred}
    assert sorted(found & module_level) == [], "imported at module level already: drop the import in the function"


def test_third_party_imports_inside_functions_are_for_cost_or_optional_dependencies():
    unlisted = sorted({f"{m}:{line} {top}" for m, line, top in OUTSIDE if top not in DEFERRED_THIRD_PARTY})
    assert unlisted == [], "import at module level, or add the distribution to DEFERRED_THIRD_PARTY with its reason"
    assert sorted(DEFERRED_THIRD_PARTY.keys() - {top for _, _, top in OUTSIDE}) == []


def test_plugins_import_only_the_package_root_their_private_modules_and_the_allowed():
    bad, used = [], set()
    for e in EDGES:
        if not _is_plugin(e.importer):
            continue
        kind = ".".join(e.importer.split(".")[:3])
        if e.imported == "iqadef":
            continue
        if _is_plugin(e.imported):
            private = e.imported.startswith(kind + ".") and e.imported.rpartition(".")[2].startswith("_")
            if not private and (e.importer, e.imported) not in PLUGIN_SIBLINGS:
                bad.append(str(e))
        elif e.imported in PLUGIN_ALLOWED:
            used.add(e.imported)
        else:
            bad.append(str(e))
    assert bad == [], "import it from `iqadef` (export it there) or add it to PLUGIN_ALLOWED with its reason"
    assert sorted(PLUGIN_ALLOWED.keys() - used) == [], "stale PLUGIN_ALLOWED entries: remove them"


def test_the_scan_counts_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("def late():\n    from . import a\n")  # a circle only through a function
    (pkg / "lazy.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
        "else:\n    import json\n"
        "class K:\n    def g(self):\n        import numpy\n        from .sub import x\n"
    )
    (pkg / "sub" / "__init__.py").write_text("from .x import y\n")
    (pkg / "sub" / "x.py").write_text("from ..lazy import K\nfrom . import z\ny = 1\n")
    (pkg / "sub" / "z.py").write_text("")
    edges, outside = scan(tmp_path, pkg)
    graph = graph_of(edges)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert [e.deferred for e in edges if e.importer == "pkg.c"] == [True]
    assert graph["pkg.lazy"] == {"pkg.sub.x"}  # TYPE_CHECKING left out; the method's import counted
    assert outside == [("pkg.lazy", 8, "numpy")]  # `json` runs on import: not deferred
    # a submodule imported from its package is an edge to the submodule, not back to the package
    assert graph["pkg.sub"] == {"pkg.sub.x"} and graph["pkg.sub.x"] == {"pkg.lazy", "pkg.sub.z"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.lazy", "pkg.sub.x"]]


def test_the_package_imports_in_a_fresh_interpreter_from_any_module():
    """Members of the former circles, each imported first (a circle makes the first import order-dependent)."""
    for module in ("iqadef.core.numerics", "iqadef.store.rundir"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        assert out.returncode == 0, (module, out.stderr[-1500:])


def test_the_example_and_the_pyiqa_adapter_import_only_the_package_root():
    """Third-party plugins need nothing beyond the public API: their imports of iqadef are ``iqadef`` itself."""
    deep = []
    for folder in (ROOT / "examples", ROOT / "plugins" / "iqadef-pyiqa" / "src"):
        for path in sorted(folder.rglob("*.py")):
            for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if not node.level
                    else []
                )
                deep += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.startswith("iqadef.")]
    assert deep == [], "export what they need from `iqadef`"
