"""Built-in commands provided as plugins (``iqadef data``, ``iqadef export``), registered through
``iqadef_register_commands`` like a third-party plugin's.

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_commands(register):
    register(
        LazyPlugin(
            "data",
            f"{__name__}.data:DataCommand",
            help="datasets: which are present, where missing ones go; `iqadef data fetch NAME` downloads one",
        )
    )
    register(
        LazyPlugin(
            "export",
            f"{__name__}.export:ExportCommand",
            help="write a run's adversarial images (x_a, optionally D(x_a)) as a dataset: PNGs, index, README",
        )
    )
    register(
        LazyPlugin(
            "train-robust",
            f"{__name__}.train_robust:TrainRobustCommand",
            help="fine-tune a metric against attacks (adversarial training, free AT, or gradient-norm regularisation)",
        )
    )
