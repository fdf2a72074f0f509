"""The plugin kinds, in one table: what a registry section is called, the hook that registers the kind,
and the contract (base class) its classes must follow.

Adding a kind is three small steps: a base class (its contract), a hook spec in :mod:`.hookspecs`, and a
row here. The plugin manager, ``iqadef list`` and ``iqadef plugins`` read this table; nothing else needs
to learn the new kind's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    #: plural, as in a registry section (``metrics:``) and ``iqadef list metrics``
    section: str
    singular: str
    #: the hook spec (in :mod:`.hookspecs`) through which plugins register classes of this kind
    hook: str
    #: the classes a registered class must derive from (any one of them), as ``"module:Class"``: imported only
    #: when a class is checked, so that listing the kinds (``iqadef --help``) does not import torch
    bases: tuple[str, ...]
    #: shown by ``iqadef list`` (commands are shown by ``iqadef --help`` instead)
    listed: bool = True
    #: a class attribute that also makes a class acceptable (summary scores are duck-typed by ``summarise``)
    duck_attribute: str | None = None

    def check(self, cls: object) -> None:
        """Raise TypeError naming the contract when ``cls`` is not a class of this kind."""
        if not isinstance(cls, type):
            raise TypeError(f"register() takes a class, got {cls!r}")
        ducked = bool(self.duck_attribute) and hasattr(cls, str(self.duck_attribute))  # first: no import
        if not ducked and not issubclass(cls, self.base_classes()):
            names = " or ".join(f"iqadef.{base.rpartition(':')[2]}" for base in self.bases)
            extra = f" (or a class with `{self.duck_attribute}`)" if self.duck_attribute else ""
            raise TypeError(f"{cls.__name__} is not a subclass of {names}{extra}")
        if not getattr(cls, "name", ""):
            raise TypeError(f"{cls.__name__} has no name")

    def base_classes(self) -> tuple[type, ...]:
        """:attr:`bases`, imported."""
        out = []
        for base in self.bases:
            module, _, name = base.partition(":")
            out.append(getattr(importlib.import_module(module), name))
        return tuple(out)


KINDS: dict[str, Kind] = {
    kind.section: kind
    for kind in (
        Kind("metrics", "metric", "iqadef_register_metrics", ("iqadef.core.base:Metric",)),
        Kind("attacks", "attack", "iqadef_register_attacks", ("iqadef.core.base:Attack",)),
        Kind("defences", "defence", "iqadef_register_defences", ("iqadef.core.base:Defence",)),
        Kind("scores", "score", "iqadef_register_scores", ("iqadef.core.base:ImageScore",), duck_attribute="summarise"),
        Kind("certified", "certified defence", "iqadef_register_certified", ("iqadef.core.smoothing:MetricSmoothing",)),
        Kind("datasets", "dataset", "iqadef_register_datasets", ("iqadef.core.dataset:DatasetPlugin",)),
        Kind("commands", "command", "iqadef_register_commands", ("iqadef.core.commands:Command",), listed=False),
    )
}

#: the kinds ``iqadef list`` shows
LISTED = tuple(section for section, kind in KINDS.items() if kind.listed)
