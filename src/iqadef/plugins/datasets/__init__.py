"""Built-in datasets: one module per dataset, registered through ``iqadef_register_datasets`` like a
third-party plugin (docs/datasets.md).

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_datasets(register):
    for name, target in (
        ("builtin", "builtin:Builtin"),
        ("folder", "folder:Folder"),
        ("iqadef-export", "iqadef_export:IqadefExport"),
        ("kadid10k", "kadid10k:KADID10k"),
        ("koniq10k", "koniq10k:KonIQ10k"),
        ("livec", "livec:LIVEChallenge"),
        ("nips2017", "nips2017:NIPS2017"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}"))
