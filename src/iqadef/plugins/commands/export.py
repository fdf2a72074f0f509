"""``iqadef export RUN_DIR --out DIR [--defended]``: a run's adversarial images as a dataset (export.py)."""

from __future__ import annotations

from pathlib import Path

import iqadef
from iqadef import Command, hookimpl


class ExportCommand(Command):
    """``iqadef export``: x_a (and D(x_a)) of a run as PNGs, an index and a datasheet."""

    name = "export"
    help = "write a run's adversarial images (x_a, optionally D(x_a)) as a dataset: PNGs, index, README"

    def configure(self, parser) -> None:
        parser.add_argument("run_dir", type=Path, help="a run folder (the `output` of `iqadef run`)")
        parser.add_argument(
            "--out", type=Path, required=True, help="the export folder (new, empty, or an earlier export)"
        )
        parser.add_argument(
            "--defended", action="store_true", help="also D(x_a) for each defence (recomputed from x_a)"
        )

    def run(self, args) -> int:

        summary = iqadef.export_run(args.run_dir, args.out, defended=args.defended, plugins=iqadef.installed_plugins())
        for problem in summary.skipped:
            print(f"warning: {problem}")
        print(
            f"{summary.adversarial} adversarial image(s)"
            + (f", {summary.defended} defended" if args.defended else "")
            + f" in {summary.out}; index.parquet, index.csv, README.md"
        )
        return 0


@hookimpl
def iqadef_register_commands(register):
    register(ExportCommand)
