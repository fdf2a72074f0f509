"""Hook specifications. A plugin module implements any of these with ``@iqadef.hookimpl``.

Register-callback style (as in ``simonw/llm``): each hook receives a ``register`` function and calls it
once per plugin class it provides, e.g.::

    @hookimpl
    def iqadef_register_defences(register):
        register(MyDefence)
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("iqadef")
hookimpl = pluggy.HookimplMarker("iqadef")


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
