"""One owner of ``results.sqlite``: only the store module (store/results.py) talks SQL; every other module reads
and writes the store through its functions (ResultStore, listed_files, artifact_table, ArtifactReader)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from repo_paths import REPO_ROOT

SRC = REPO_ROOT / "src"
STORE = "iqadef.store.results"
#: Modules that still open the store themselves, and why.
NOT_YET: dict[str, str] = {}
SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|VACUUM)\b")


def _module(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sql_users(root: Path, src: Path = SRC) -> dict[str, list[str]]:
    """Module -> what in it talks SQL: an import of sqlite3, a string that starts with an SQL statement."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        hits = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlite3" for a in node.names):
                hits.append(f"{node.lineno}: import sqlite3")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
                hits.append(f"{node.lineno}: from sqlite3 import")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
                hits.append(f"{node.lineno}: {node.value.strip()[:40]!r}")
        if hits:
            found[_module(path, src)] = hits
    return found


def test_only_the_store_module_talks_sql():
    users = sql_users(SRC / "iqadef")
    assert STORE in users  # the scan sees SQL where it is
    assert {m: hits for m, hits in users.items() if m != STORE and m not in NOT_YET} == {}
    assert sorted(NOT_YET.keys() - users.keys()) == [], "stale NOT_YET entries: remove them"


def test_the_scan_sees_sql_in_strings_and_f_strings(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text('import sqlite3 as db\nQ = f"""\n  SELECT {1} FROM t"""\n')
    (tmp_path / "pkg" / "b.py").write_text('"""Docs may say SELECT."""\nx = "selection"\n')
    (tmp_path / "pkg" / "c.py").write_text('def f(con):\n    return con.execute("PRAGMA table_info(cells)")\n')
    users = sql_users(tmp_path / "pkg", tmp_path)
    assert users == {"pkg.a": ["1: import sqlite3", "2: 'SELECT'"], "pkg.c": ["2: 'PRAGMA table_info(cells)'"]}
