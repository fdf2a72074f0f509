"""The plugin kinds, in one table: what a registry section is called, the hook that registers the kind,
and the contract (base class) its classes must follow.

Adding a kind is three small steps: a base class (its contract), a hook spec in :mod:`.hookspecs`, and a
row here. The plugin manager, ``iqadef list`` and ``iqadef plugins`` read this table; nothing else needs
to learn the new kind's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Attack, Defence, ImageScore, Metric
from .commands import Command
from .dataset import DatasetPlugin
from .smoothing import MetricSmoothing


@dataclass(frozen=True)
class Kind:
    #: plural, as in a registry section (``metrics:``) and ``iqadef list metrics``
    section: str
    singular: str
    #: the hook spec (in :mod:`.hookspecs`) through which plugins register classes of this kind
    hook: str
    #: the classes a registered class must derive from (any one of them)
    bases: tuple[type, ...]
    #: shown by ``iqadef list`` (commands are shown by ``iqadef --help`` instead)
    listed: bool = True
    #: a class attribute that also makes a class acceptable (summary scores are duck-typed by ``summarise``)
    duck_attribute: str | None = None

    def check(self, cls: object) -> None:
        """Raise TypeError naming the contract when ``cls`` is not a class of this kind."""
        if not isinstance(cls, type):
            raise TypeError(f"register() takes a class, got {cls!r}")
        if not issubclass(cls, self.bases) and not (self.duck_attribute and hasattr(cls, self.duck_attribute)):
            names = " or ".join(f"iqadef.{base.__name__}" for base in self.bases)
            extra = f" (or a class with `{self.duck_attribute}`)" if self.duck_attribute else ""
            raise TypeError(f"{cls.__name__} is not a subclass of {names}{extra}")
        if not getattr(cls, "name", ""):
            raise TypeError(f"{cls.__name__} has no name")


KINDS: dict[str, Kind] = {kind.section: kind for kind in (
    Kind("metrics", "metric", "iqadef_register_metrics", (Metric,)),
    Kind("attacks", "attack", "iqadef_register_attacks", (Attack,)),
    Kind("defences", "defence", "iqadef_register_defences", (Defence,)),
    Kind("scores", "score", "iqadef_register_scores", (ImageScore,), duck_attribute="summarise"),
    Kind("certified", "certified defence", "iqadef_register_certified", (MetricSmoothing,)),
    Kind("datasets", "dataset", "iqadef_register_datasets", (DatasetPlugin,)),
    Kind("commands", "command", "iqadef_register_commands", (Command,), listed=False),
)}

#: the kinds ``iqadef list`` shows
LISTED = tuple(section for section, kind in KINDS.items() if kind.listed)
