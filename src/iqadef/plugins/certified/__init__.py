"""Built-in certified defences (registry section ``certified:``): smoothings of the metric, f -> f_s.

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_certified(register):
    for name, target in (
        ("ddrs", "ddrs:DiffusionDenoisedSmoothing"),
        ("densepure", "densepure:DensePure"),
        ("dms-iqa", "dms_iqa:DMSIQA"),
        ("drs", "drs:DenoisedRandomizedSmoothing"),
        ("fs-iqa", "fs_iqa:FeatureSmoothing"),
        ("mean-smoothing", "mean_smoothing:MeanSmoothing"),
        ("median-smoothing", "median_smoothing:MedianSmoothing"),
        ("rs", "rs:RandomizedSmoothing"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}"))


@hookimpl
def iqadef_register_commands(register):
    register(
        LazyPlugin(
            "train-dms",
            f"{__name__}.dms_iqa:TrainDMSCommand",
            help="train the dms-iqa denoiser on a run's clean images (MSE + ranking + target loss)",
        )
    )
