"""Built-in defences: one module per plugin, each with an ``iqadef_register_defences`` hook.

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_defences(register):
    for name, target in (
        ("color-quantization", "color_quantization:ColorQuantization"),
        ("diffjpeg", "diffjpeg:DiffJpeg"),
        ("diffpure", "diffpure:DiffPure"),
        ("diffpure-unsharp", "diffpure_unsharp:DiffPureUnsharp"),
        ("disco", "disco:DiscoDefence"),
        ("fcn", "fcn:FCNDefence"),
        ("flip", "flip:Flip"),
        ("gaussian-blur", "gaussian_blur:GaussianBlur"),
        ("no-defence", "identity:NoDefence"),
        ("jpeg", "jpeg:Jpeg"),
        ("median-blur", "median_blur:MedianBlur"),
        ("mprnet", "mprnet:MPRNetDefence"),
        ("random-crop", "random_crop:RandomCrop"),
        ("random-noise", "random_noise:RandomNoise"),
        ("random-rotate", "random_rotate:RandomRotate"),
        ("realesrgan", "realesrgan:RealESRGANDefence"),
        ("resize", "resize:Resize"),
        ("unsharp", "unsharp:Unsharp"),
        ("upscale", "upscale:Upscale"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}"))


@hookimpl
def iqadef_register_commands(register):
    register(
        LazyPlugin(
            "train-fcn", f"{__name__}.fcn:TrainFCNCommand", help="train the FCN purifier on a run's adversarial cache"
        )
    )
