"""No import circle among the core's modules (issue 15): each module can be imported on its own.

Only imports that run when a module is imported count (module level, not under ``if TYPE_CHECKING:``);
an import inside a function is how a module defers one, and is left out. The scan is over every module
under ``src/iqadef/core``, so it holds for modules added or split later too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
CORE = SRC / "iqadef" / "core"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: list[ast.stmt]):
    """Import statements that run when the module is imported (also inside module-level if/try/with)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(node, ast.With):
            yield from _import_time_statements(node.body)


def import_graph(src: Path, package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules under ``package_dir`` that importing it imports directly.

    ``from M import n`` needs the submodule ``M.n`` when there is one, else ``M`` itself (for its
    attribute ``n``); ``import a.b`` needs ``a.b``.
    """
    paths = {_module_name(p, src): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _import_time_statements(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                needed = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                needed = [f"{module}.{a.name}" if f"{module}.{a.name}" in paths else module for a in node.names]
            graph[name].update(m for m in needed if m in paths and m != name)
    return graph


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
        for nxt in sorted(graph[node]):
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


def test_the_core_has_no_import_circle():
    graph = import_graph(SRC, CORE)
    assert "iqadef.core.report.page" in graph and "iqadef.core.report.tables" in graph["iqadef.core.report.page"]
    assert circles(graph) == []


def test_the_circle_scan_sees_a_circle_and_only_import_time_edges(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("try:\n    from . import a\nexcept ImportError:\n    pass\n")
    (pkg / "lazy.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
                                 "def g():\n    from .a import f\n")
    (pkg / "sub" / "__init__.py").write_text("from .x import y\n")
    (pkg / "sub" / "x.py").write_text("from ..lazy import g\nfrom . import z\ny = 1\n")
    (pkg / "sub" / "z.py").write_text("")
    graph = import_graph(tmp_path, pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.lazy"] == set()  # TYPE_CHECKING and function-level imports do not run on import
    # a submodule imported from its package is an edge to the submodule, not back to the package
    assert graph["pkg.sub"] == {"pkg.sub.x"} and graph["pkg.sub.x"] == {"pkg.lazy", "pkg.sub.z"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "sub" / "z.py").write_text("from . import y\n")  # y is the package's attribute: needs pkg.sub
    assert circles(import_graph(tmp_path, pkg)) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.sub", "pkg.sub.x",
                                                                                  "pkg.sub.z"]]
