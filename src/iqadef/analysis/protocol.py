"""The robustness protocol (registry key ``protocol: quick | standard``, docs/evaluation.md).

One key turns a run into a worst-case evaluation in the sense of Carlini et al. 2019 ("On evaluating
adversarial robustness") and Croce & Hein 2020 (AutoAttack): per (metric, defence, budget) an ensemble of
a non-adaptive attack (the study's protocol: x_a computed on f alone, shared by every defence), an adaptive
white-box attack on f(D(.)) (BPDA for non-differentiable defences, EOT over randomised ones,
docs/adaptive.md) and a score-based black-box attack through the defence (no gradient: the
gradient-masking cross-check), at fixed L-inf and L2 budgets, plus an adaptive attack with an unbounded
budget (the sanity check). The protocol only *adds attack entries* to the grid (:func:`protocol_attacks`),
so its cells are ordinary cells: cached, resumable, kill -9 safe. Which attack plays which role is one
table (:data:`ROLE_ATTACKS`); the analysis of the cells is :mod:`iqadef.analysis.verdict`.

This module is plain data and functions: the registry builds the attack entries from its specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

#: Values of the ``protocol`` key.
LEVELS = ("quick", "standard")
#: The study's own budget (I-FGSM, eps = 10/255): in both levels so its figures stay comparable.
STUDY_EPS = 10 / 255
#: The budget the headline ranking uses: the study's.
HEADLINE = ("linf", STUDY_EPS)
#: The unbounded sanity check's budget (L-inf): the whole pixel range.
SANITY_EPS = 1.0
#: The roles of the ensemble, in the order the verdict's columns list them.
ROLES = ("nonadaptive", "transfer", "adaptive", "blackbox", "sanity")


@dataclass(frozen=True)
class Level:
    """One protocol level: budgets, attack strength, EOT draws and the evaluation's re-draws."""

    linf: tuple[float, ...]
    l2: tuple[float, ...]
    steps: int  # adaptive white-box attack's iterations (per restart)
    restarts: int
    eot: int  # draws of a randomised defence per adaptive step
    queries: int  # black-box attack's queries per image
    redraws: int  # fresh draws of a randomised defence each x_a is scored against (flag e)
    nonadaptive_steps: int = 10  # the study's I-FGSM: 10 iterations
    #: the budgets the black-box attack runs at (None: every budget of the threat)
    blackbox_budgets: tuple[float, ...] | None = None
    #: the unbounded sanity check's iterations (through a 5x5 median, 10 are not enough to reach the top)
    sanity_steps: int = 20


LEVEL_SETTINGS: dict[str, Level] = {
    # A 2-core CPU, the default registry (16 defences, 14 images, tiny-iqa) in under 15 minutes
    # (docs/performance.md): two L-inf budgets, APGD with 20 steps (with 10 it stays below the study's
    # I-FGSM on some images), a short black-box check at the study's budget only, no L2 budget.
    "quick": Level(
        linf=(4 / 255, STUDY_EPS),
        l2=(),
        steps=20,
        restarts=1,
        eot=2,
        queries=30,
        redraws=3,
        blackbox_budgets=(STUDY_EPS,),
        sanity_steps=20,
    ),
    # Full strength (a GPU): the four usual budgets, the study's, one L2 budget; APGD's 100 iterations.
    "standard": Level(
        linf=(2 / 255, 4 / 255, 8 / 255, STUDY_EPS, 16 / 255),
        l2=(3.0,),
        steps=100,
        restarts=2,
        eot=8,
        queries=1000,
        redraws=8,
        sanity_steps=20,
    ),
}


@dataclass(frozen=True)
class RoleSpec:
    """The attack that plays a role for a threat: its plugin name, its parameters for a budget and level,
    and how it sees the defence (``adaptive`` mode of docs/adaptive.md, EOT draws)."""

    attack: str
    params: Callable[[float, Level], dict[str, Any]]
    adaptive: str = "none"
    eot: Callable[[Level], int] = lambda level: 1


def _ifgsm(eps: float, level: Level) -> dict[str, Any]:
    # alpha = eps / iters reaches the budget's edge in `iters` steps: at 10/255 exactly the study's attack
    return {"eps": eps, "iters": level.nonadaptive_steps, "alpha": eps / level.nonadaptive_steps}


def _apgd(norm: str) -> Callable[[float, Level], dict[str, Any]]:
    return lambda eps, level: {"eps": eps, "norm": norm, "steps": level.steps, "restarts": level.restarts}


#: Which attack plays which role, per threat: the study's I-FGSM (PGD-L2 at L2) on f alone; APGD on f alone
#: (``transfer``: x_a shared by the defences, one run per image; what a defence that hides its gradient
#: faces); APGD (Croce & Hein 2020) through the defence with BPDA/EOT; the Square attack (Andriushchenko et al. 2020,
#: started at x as
#: in the benchmark's code, so it never ends below f(D(x)) of a deterministic defence) through the defence,
#: scores only (one draw of a randomised defence per query); L-inf only, as the benchmark's Square attack.
ROLE_ATTACKS: dict[tuple[str, str], RoleSpec] = {
    ("nonadaptive", "linf"): RoleSpec("ifgsm", _ifgsm),
    ("nonadaptive", "l2"): RoleSpec("pgd-l2", lambda eps, lv: {"eps": eps, "steps": lv.nonadaptive_steps}),
    ("transfer", "linf"): RoleSpec("apgd", _apgd("linf")),
    ("transfer", "l2"): RoleSpec("apgd", _apgd("l2")),
    ("adaptive", "linf"): RoleSpec("apgd", _apgd("linf"), "bpda+eot", lambda lv: lv.eot),
    ("adaptive", "l2"): RoleSpec("apgd", _apgd("l2"), "bpda+eot", lambda lv: lv.eot),
    ("blackbox", "linf"): RoleSpec(
        "square-attack", lambda eps, lv: {"eps": eps, "queries": lv.queries}, "bpda+eot", lambda lv: 1
    ),
}


@dataclass(frozen=True)
class ProtocolAttack:
    """One attack entry the protocol adds: its plugin and parameters, how it sees the defence, its role."""

    role: str
    threat: str  # linf | l2
    eps: float
    attack: str
    params: dict[str, Any]
    adaptive: str
    eot_samples: int

    @property
    def label(self) -> str:
        """``adaptive@linf=8/255``: the role and the budget (the attack is in run.json and attack_params)."""
        return f"{self.role}@{self.threat}={format_eps(self.threat, self.eps)}"


def format_eps(threat: str, eps: float) -> str:
    """``8/255`` for an L-inf budget that is a whole number of 8-bit levels, else the number."""
    if threat == "linf":
        levels = Fraction(eps * 255).limit_denominator(1000)  # exact for the budgets written as k/255
        if levels.denominator == 1:
            return f"{levels.numerator}/255"
    return f"{eps:.6g}"


def protocol_attacks(
    level_name: str, roles: dict[tuple[str, str], RoleSpec] | None = None, radii: tuple[float, ...] = ()
) -> list[ProtocolAttack]:
    """The attack entries of a protocol level, in grid order: per threat and budget the roles, then the
    unbounded adaptive sanity check. ``radii``: the L2 radii of the run's certified defences, added as L2
    budgets so that the best empirical attack at a certificate's radius stands beside it."""
    roles = ROLE_ATTACKS if roles is None else roles
    level = LEVEL_SETTINGS[level_name]
    level = Level(**{**level.__dict__, "l2": tuple(sorted(set(level.l2) | {float(r) for r in radii}))})
    out: list[ProtocolAttack] = []

    def add(role: str, threat: str, eps: float, spec_role: str | None = None, level: Level = level) -> None:
        spec = roles.get((spec_role or role, threat))
        if spec is None:
            return
        out.append(
            ProtocolAttack(
                role,
                threat,
                eps,
                spec.attack,
                spec.params(eps, level),
                spec.adaptive,
                spec.eot(level) if spec.adaptive != "none" else 1,
            )
        )

    for threat, budgets in (("linf", level.linf), ("l2", level.l2)):
        for eps in budgets:
            for role in ("nonadaptive", "transfer", "adaptive", "blackbox"):
                if role == "blackbox" and level.blackbox_budgets is not None and eps not in level.blackbox_budgets:
                    continue
                add(role, threat, eps)
    add(
        "sanity",
        "linf",
        SANITY_EPS,
        spec_role="adaptive",
        level=Level(**{**level.__dict__, "steps": level.sanity_steps, "restarts": 1}),
    )
    return out


def threat_model(level_name: str, radii: tuple[float, ...] = ()) -> str:
    """The threat model in one paragraph, as every output states it."""
    level = LEVEL_SETTINGS[level_name]
    level = Level(**{**level.__dict__, "l2": tuple(sorted(set(level.l2) | {float(r) for r in radii}))})
    linf = ", ".join(format_eps("linf", e) for e in level.linf)
    l2 = (
        f"; L2 budget {', '.join(format_eps('l2', e) for e in level.l2)} (absolute, over 3xHxW pixel values)"
        if level.l2
        else "; no L2 budget at this level"
    )
    blackbox = (
        ""
        if level.blackbox_budgets is None
        else f" at {', '.join(format_eps('linf', e) for e in level.blackbox_budgets)} only"
    )
    return (
        f"protocol {level_name}: L-inf budgets {linf}{l2}. The attacker's goal is to move the defended "
        f"score f(D(x_a)) in the metric's better direction; it knows the defence (adaptive white-box: "
        f"APGD, {level.steps} steps x {level.restarts} restart(s), EOT over {level.eot} draws of a randomised "
        f"defence) or only queries f(D(.)) (black-box: Square attack, {level.queries} queries{blackbox}); an "
        f"unbounded adaptive attack (L-inf {format_eps('linf', SANITY_EPS)}, {level.sanity_steps} steps) checks the "
        f"attack itself. Verdict per image: the "
        f"worst case over the ensemble; each x_a is also scored against {level.redraws} fresh draws of a "
        f"randomised defence."
    )


def describe(
    level_name: str,
    labels: dict[str, ProtocolAttack | None],
    study: list[str],
    attack_labels: dict[str, str],
    radii: tuple[float, ...] = (),
) -> dict[str, Any]:
    """What run.json records of the protocol: the level, the threat model, each protocol cell's role and
    budget by attack label (``labels``; a role played by an entry of the user's, under its own label), and
    the user's non-adaptive attacks (``study``), which count at the budgets their measured L-inf fits."""
    level = LEVEL_SETTINGS[level_name]
    return {
        "level": level_name,
        "threat_model": threat_model(level_name, radii),
        "budgets": {"linf": list(level.linf), "l2": sorted(set(level.l2) | {float(r) for r in radii})},
        "certified_radii": sorted({float(r) for r in radii}),
        "headline": {"threat": HEADLINE[0], "eps": HEADLINE[1]},
        "sanity_eps": SANITY_EPS,
        "redraws": level.redraws,
        "cells": {
            label: {
                "role": p.role,
                "threat": p.threat,
                "eps": p.eps,
                "attack": attack_labels[label],
                "adaptive": p.adaptive,
                "eot_samples": p.eot_samples,
            }
            for label, p in labels.items()
            if p is not None
        },
        "study": list(study),
    }
