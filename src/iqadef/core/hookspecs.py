"""Hook specifications. A plugin module implements any of these with ``@iqadef.hookimpl``.

Register-callback style (as in ``simonw/llm``): each hook receives a ``register`` function and calls it
once per plugin class it provides, e.g.::

    @hookimpl
    def iqadef_register_defences(register):
        register(MyDefence)

``register`` also takes a :class:`LazyPlugin` (a name and ``"module:Class"``), imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

hookspec = pluggy.HookspecMarker("iqadef")
hookimpl = pluggy.HookimplMarker("iqadef")


@dataclass(frozen=True)
class LazyPlugin:
    """What ``register`` also takes instead of a class: its name and where it is, imported on first use
    (as pyiqa and lm-eval register their models), so that listing names, ``iqadef --help`` and the report
    import no plugin module, nor torch through it::

        @hookimpl
        def iqadef_register_defences(register):
            register(LazyPlugin("my-defence", "my_package.defence:MyDefence"))

    Once imported, the class must be of the hook's kind and carry the same ``name`` (and ``help``/``summary``
    where given), else it counts as a plugin that failed to load.
    """

    #: the name the class registers under (its ``name``)
    name: str
    #: ``"package.module:Class"``
    target: str
    #: commands: the one line ``iqadef --help`` shows (the class's ``help``)
    help: str = ""
    #: scores: a summary score (``summarise``; the report imports only these), not a per-image ImageScore
    summary: bool = False

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]


@hookspec
def iqadef_register_metrics(register):
    """Register :class:`iqadef.Metric` subclasses."""


@hookspec
def iqadef_register_attacks(register):
    """Register :class:`iqadef.Attack` subclasses."""


@hookspec
def iqadef_register_defences(register):
    """Register :class:`iqadef.Defence` subclasses."""


@hookspec
def iqadef_register_scores(register):
    """Register score classes: per-image :class:`iqadef.ImageScore` subclasses, and summary scores."""


@hookspec
def iqadef_register_datasets(register):
    """Register :class:`iqadef.core.dataset.DatasetPlugin` subclasses: datasets a registry names with
    ``dataset: {name: ...}`` (their layout, score file, splits and where their files come from)."""


@hookspec
def iqadef_register_commands(register):
    """Register :class:`iqadef.Command` subclasses: command-line subcommands (``iqadef NAME ...``).

    The argparse counterpart of llm's ``register_commands(cli)``: a plugin that needs its own command
    (training a learned purifier, fetching a data set) ships it with the plugin, not in the core.
    """


@hookspec
def iqadef_register_certified(register):
    """Register :class:`iqadef.MetricSmoothing` subclasses: certified defences that wrap the metric
    (``f -> f_s``) and certify an interval of the smoothed score (registry section ``certified:``)."""
