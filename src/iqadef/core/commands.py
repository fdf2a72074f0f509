"""Plugin-provided command-line subcommands (the ``iqadef_register_commands`` hook).

A plugin registers a :class:`Command` subclass; ``iqadef NAME ...`` then builds its arguments with
:meth:`Command.configure` and runs :meth:`Command.run`. Built-in commands (``run``, ``report``, ...) live
in :mod:`iqadef.cli`; a plugin command may not take one of their names.
"""

from __future__ import annotations

import argparse
from typing import ClassVar


class Command:
    """One subcommand: ``name`` (what follows ``iqadef``), a one-line ``help``, arguments and a body."""

    kind: ClassVar[str] = "command"
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its (sub)parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit status (0 on success). Raise IqadefError for a user mistake."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict:
        return {"name": cls.name, "kind": cls.kind, "doc": (cls.__doc__ or "").strip(), "params": [], "help": cls.help}
