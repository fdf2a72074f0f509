"""Built-in scores: per-image measures (ImageScore) and per-group summaries (SummaryScore).

This package is also their index: its hooks register each one lazily, by name and ``"module:Class"``
(:class:`iqadef.LazyPlugin`), so that a module is imported only when its class is used. A new module is
added here too (tests/core/test_plugins.py checks the index against the modules' own hooks).
"""

from __future__ import annotations

from iqadef import LazyPlugin, hookimpl

#: the summary scores (the report imports only these)
SUMMARIES = ("certified", "msu-robustness", "srocc")


@hookimpl
def iqadef_register_scores(register):
    for name, target in (
        ("certified", "certified:CertifiedSummary"),
        ("full-reference", "full_reference:FullReferenceMeasures"),
        ("gain", "gain:GainScore"),
        ("msu-gain", "msu_gain:MsuGain"),
        ("perturbation", "perturbation:PerturbationL2"),
        ("quality", "quality:QualityScore"),
        ("msu-robustness", "robustness_benchmark:MsuRobustness"),
        ("srocc", "srocc:Srocc"),
    ):
        register(LazyPlugin(name, f"{__name__}.{target}", summary=name in SUMMARIES))
