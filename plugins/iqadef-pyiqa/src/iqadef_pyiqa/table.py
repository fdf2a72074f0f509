"""``python -m iqadef_pyiqa.table``: the markdown table of docs/pyiqa.md (every registered metric, its
direction, range, gradient and the first pyiqa file it loads); with ``--names``, :data:`.names.NAMES` for the
installed pyiqa."""

from __future__ import annotations

import sys

from . import catalog
from .metrics import known_files


def rows() -> list[str]:
    found = known_files()
    out = ["| iqadef name | better | range (loss span) | differentiable | first file it needs |",
           "|---|---|---|---|---|"]
    for e in catalog.entries():
        need = found.get(e.pyiqa_name) or {}
        kind = need.get("needs")
        if kind is None and need:
            what = "none"
        elif kind == "pyiqa":
            what = f"`{need['url'].rsplit('/', 1)[-1]}` (pyiqa file, iqadef rules)"
        elif kind == "torch-hub":
            what = f"torchvision backbone `{need['url'].rsplit('/', 1)[-1]}`"
        elif kind == "other":
            what = f"backbone or package outside pyiqa ({need['error'].split(':')[0]})"
        else:
            what = "not scanned"
        grad = "yes" if e.differentiable else f"no: {e.why_not_differentiable}"
        rng = f"{e.range[0]:g} .. {e.range[1]:g}" + ("" if e.range_note.startswith("pyiqa") else " (assumed)")
        out.append(f"| `{e.name}` | {'lower' if e.lower_better else 'higher'} | {rng} | {grad} | {what} |")
    return out


def main() -> int:
    if sys.argv[1:] == ["--names"]:  # names.NAMES for the installed pyiqa
        print(f"pyiqa {catalog.pyiqa_version()}:", tuple(e.pyiqa_name for e in catalog.entries()))
        return 0
    print(f"pyiqa {catalog.pyiqa_version()}: {len(catalog.entries())} metrics registered\n")
    print("\n".join(rows()))
    left = catalog.skipped()
    if left:
        print("\nNot registered: " + "; ".join(f"`{k}` ({v})" for k, v in left.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
