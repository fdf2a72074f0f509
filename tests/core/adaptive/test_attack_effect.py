"""Adaptive attacks beat a defence that non-adaptive attacks do not: BPDA through JPEG, EOT over a
random rotation (Athalye et al. 2018), with I-FGSM at its defaults (eps 10/255, 10 steps of 1/255).
Needs trained tiny-iqa weights (see conftest). Gain here = mean of f(D(x_a)) - f(D(x)) in tiny-iqa points."""

from __future__ import annotations

import pytest
import torch

from iqadef.core.adaptive import DefendedMetric, eot_seed
from iqadef.store.artifacts import quantize

ATTACK_SEED = 1
EVAL_SEEDS = (987654321, 31337, 2024, 77)  # the defender's seeds, never ones the attacker draws


def defended_gain(metric, defence, clean, attacked) -> torch.Tensor:
    """Per-image rise of the defended score, averaged over the evaluation seeds (both sides alike)."""
    gains = []
    with torch.no_grad():
        for seed in EVAL_SEEDS:
            before = metric.score(defence.purify(clean, seed=seed))
            after = metric.score(defence.purify(quantize(attacked), seed=seed))
            gains.append(after - before)
    return torch.stack(gains).mean(dim=0)


def plain_and_adaptive(registry, metric, defence, images, samples, **attack_params):
    attack = registry.get("attacks", "ifgsm")(**attack_params).load("cpu")
    plain = attack.run(metric, images.clone(), seed=ATTACK_SEED)
    target = DefendedMetric(metric, defence, samples=samples, seed=ATTACK_SEED)
    adaptive = attack.run(target, images.clone(), seed=ATTACK_SEED)
    return (defended_gain(metric, defence, images, plain), defended_gain(metric, defence, images, adaptive), target)


@pytest.mark.slow
def test_bpda_through_jpeg_beats_the_plain_attack(registry, trained_metric, small_images):
    jpeg = registry.get("defences", "jpeg")(quality=50).load("cpu")
    plain, bpda, _ = plain_and_adaptive(registry, trained_metric, jpeg, small_images, 1)
    print(
        f"JPEG q50: plain I-FGSM gain {plain.mean():.3f} {plain.tolist()}, "
        f"BPDA-I-FGSM gain {bpda.mean():.3f} {bpda.tolist()}"
    )
    assert bpda.mean() > 1.25 * plain.mean() and bpda.mean() - plain.mean() > 3.0
    assert (bpda > plain).all()


@pytest.mark.slow
def test_eot_over_random_rotation_beats_the_plain_attack(registry, trained_metric, small_images):
    rotate = registry.get("defences", "random-rotate")(angle_limit=15.0).load("cpu")
    images = small_images[:3]
    plain, eot, target = plain_and_adaptive(registry, trained_metric, rotate, images, 4)
    print(
        f"random-rotate 15: plain I-FGSM gain {plain.mean():.3f} {plain.tolist()}, "
        f"EOT-I-FGSM gain {eot.mean():.3f} {eot.tolist()}"
    )
    attacker_seeds = {eot_seed(ATTACK_SEED, k) for k in range(target.calls * target.samples)}
    assert target.calls == 10 and not attacker_seeds & set(EVAL_SEEDS)
    assert eot.mean() > 1.4 * plain.mean() and eot.mean() - plain.mean() > 3.0
    assert (eot > plain).float().mean() >= 0.6
