"""Built-in attacks: one module per plugin, each with an ``iqadef_register_attacks`` hook.

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl


@hookimpl
def iqadef_register_attacks(register):
    for name, target in (
        ("advcf", "advcf:AdvCF"),
        ("amifgsm", "amifgsm:AMIFGSM"),
        ("apgd", "apgd:APGD"),
        ("cadv", "cadv:CAdv"),
        ("cnn-attack", "cnn_attack:CnnAttack"),
        ("cumulative-uap", "cumulative_uap:CumulativeUAP"),
        ("fgsm", "fgsm:FGSM"),
        ("generative-uap", "generative_uap:GenerativeUAP"),
        ("grad-est", "grad_est:GradEst"),
        ("ifgsm", "ifgsm:IFGSM"),
        ("korhonen", "korhonen:Korhonen"),
        ("madc", "madc:MADC"),
        ("mifgsm", "mifgsm:MIFGSM"),
        ("onepixel", "onepixel:OnePixel"),
        ("parsimonious", "parsimonious:Parsimonious"),
        ("patch-rs", "patch_rs:PatchRS"),
        ("pgd-l2", "pgd_l2:PGDL2"),
        ("pgd-linf", "pgd_linf:PGDLinf"),
        ("square-attack", "square_attack:SquareAttack"),
        ("ssah", "ssah:SSAH"),
        ("stadv", "stadv:StAdv"),
        ("uap", "uap:UAP"),
        ("zhang-dists", "zhang_dists:ZhangDists"),
        ("zhang-lpips", "zhang_lpips:ZhangLpips"),
        ("zhang-ssim", "zhang_ssim:ZhangSsim"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}"))
