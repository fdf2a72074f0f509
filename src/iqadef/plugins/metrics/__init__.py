"""Built-in metrics: one module per plugin, each with an ``iqadef_register_metrics`` hook.

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_metrics(register):
    for name, target in (
        ("tiny-iqa", "embedded:TinyIQA"),
        ("linearity", "linearity:Linearity"),
        ("metaiqa", "metaiqa:MetaIQA"),
        ("spaq", "spaq:SPAQ"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}"))
