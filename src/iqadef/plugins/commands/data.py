"""``iqadef data [list|fetch NAME]``: which datasets are present, where missing ones go, and fetching them
(progress bar, resumable, checksummed, safely unpacked; ``IQADEF_OFFLINE`` forbids downloads,
``IQADEF_DATA`` moves the data dir)."""

from __future__ import annotations

import json
import sys

import iqadef
from iqadef import Command, IqadefError, data_dir, dataset_status, fetch_dataset, hookimpl


def _options(pairs: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise IqadefError(f"--option {pair!r}: write KEY=VALUE (e.g. --option resolution=512x384)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            why = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise IqadefError(
                f"--option {pair!r}: the value is not valid YAML ({why}); quote it, e.g. "
                f"--option '{key.strip()}=\"...\"'"
            ) from None
    return out


def _plugin(name: str, root: str | None, options: dict[str, object]):

    cls = iqadef.installed_plugins().get("datasets", name, where="iqadef data")
    return cls(root, where=f"dataset {name}", **options) if cls.fetchable else None


class DataCommand(Command):
    """``iqadef data``: the datasets, whether their files are present, and ``fetch``."""

    name = "data"
    help = "datasets: which are present, where missing ones go; `iqadef data fetch NAME` downloads one"

    def configure(self, parser) -> None:
        parser.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
        parser.add_argument("dataset", nargs="?", help="dataset name (for fetch)")
        parser.add_argument("--root", help="the dataset's folder (default: $IQADEF_DATA/NAME)")
        parser.add_argument(
            "--option",
            "-o",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a dataset option, as in the registry (e.g. resolution=512x384)",
        )
        parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after unpacking")
        parser.add_argument("--json", action="store_true")

    def run(self, args) -> int:

        options = _options(args.option)
        if args.action == "fetch":
            if not args.dataset:
                raise IqadefError("usage: iqadef data fetch NAME (a dataset from `iqadef data`)")
            plugin = _plugin(args.dataset, args.root, options)
            if plugin is None:
                raise IqadefError(f"dataset {args.dataset!r} is not fetched: it reads local files (see `iqadef data`)")
            root = fetch_dataset(plugin, progress=sys.stderr.isatty(), keep_archives=args.keep_archives)
            print(f"{plugin.name}: present in {root}")
            return 0
        plugins = iqadef.installed_plugins()
        names = [args.dataset] if args.dataset else plugins.names("datasets")
        rows = []
        for name in names:
            plugin = _plugin(name, args.root, options if args.dataset else {})
            if plugin is not None:
                rows.append(dataset_status(plugin))
        if args.json:
            print(json.dumps({"data_dir": str(data_dir()), "datasets": rows}, indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"datasets (data dir {data_dir()}; IQADEF_DATA moves it)")
        for col in ("dataset", "present", "folder", "files (how to get them)"):
            table.add_column(col)
        for row in rows:
            files = "\n".join(
                f"{f['filename']}: " + (f["manual"] or ", ".join(f["urls"]) or "no URL") for f in row["files"]
            )
            state = (
                "yes"
                if row["present"]
                else "missing " + ", ".join(row["missing"])
                if row["missing"]
                else "not as published: " + "; ".join(row["problems"])
            )
            table.add_row(
                Text(row["name"]),
                Text(state, style="green" if row["present"] else "red"),
                Text(row["root"]),
                Text(files),
            )
        Console(width=None if sys.stdout.isatty() else 200).print(table)
        print("folder and builtin read local files; `dataset: {images: DIR, mos: FILE}` in a registry")
        return 0


@hookimpl
def iqadef_register_commands(register):
    register(DataCommand)
