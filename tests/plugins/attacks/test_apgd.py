"""APGD for a scalar score: Algorithm 1 of Croce & Hein (2020) written out in the test, the bound, the score
rise on every built-in metric, and at least I-FGSM's strength at the same eps."""

from __future__ import annotations

import math

import pytest
import torch
from official_layout import random_state

from iqadef import Metric, attack_loss
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.attacks.apgd import APGD, checkpoints, image_generator, random_start

# -- Algorithm 1, one image at a time, in the paper's notation ------------------------------------------------


def paper_checkpoints(n_iter):
    """W = {w_j = ceil(p_j N_iter)}: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(pj * n_iter, 9)) for pj in p[1:]})


def f_and_grad(metric, z):
    """The objective Algorithm 1 maximises, f = -attack_loss (the score in its better direction), and its
    gradient, by a leaf tensor and .backward()."""
    z = z.detach().clone().requires_grad_(True)
    value = -attack_loss(metric, z).sum()
    value.backward()
    return value.item(), z.grad.detach()


def P(x, z, eps, norm):
    """Projection onto the eps-ball around x (L-inf: clip; L2: rescale, as autopgd_base) and [0, 1]."""
    if norm == "linf":
        return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0, 1)
    d = z - x
    n = d.norm()
    return torch.clamp(x + d / (n + 1e-12) * min(eps, n.item()), 0, 1)


def step_direction(g, norm):
    return g.sign() if norm == "linf" else g / (g.norm() + 1e-12)


def reference_apgd(metric, x, x0, eps, norm, n_iter, rho=0.75, alpha=0.75, log=None):
    W = paper_checkpoints(n_iter)
    eta = 2 * eps
    fx0, g0 = f_and_grad(metric, x0)
    xs, fs, gs = [x0], [fx0], [g0]
    x1 = P(x, x0 + eta * step_direction(g0, norm), eps, norm)  # line 2
    fx1, g1 = f_and_grad(metric, x1)
    xs.append(x1), fs.append(fx1), gs.append(g1)
    fmax, xmax, gmax = (fx0, x0, g0) if fx0 >= fx1 else (fx1, x1, g1)  # lines 3-4
    last_w, eta_at_last, fmax_at_last = 0, None, None
    for k in range(1, n_iter + 1):
        if k in W:  # checkpoint w_j = k (after x^(k))
            increases = sum(fs[i + 1] > fs[i] for i in range(last_w, k))
            condition1 = increases <= rho * (k - last_w)  # autopgd_base: t <= k * rho
            condition2 = eta_at_last is not None and eta_at_last == eta and fmax_at_last == fmax
            eta_at_last, fmax_at_last, last_w = eta, fmax, k
            if log is not None:
                log.append((k, condition1, condition2))
            if condition1 or condition2:
                eta = eta / 2
                xs[k], fs[k], gs[k] = xmax, fmax, gmax  # x^(k) <- x_max
        if k == n_iter:
            break
        z = P(x, xs[k] + eta * step_direction(gs[k], norm), eps, norm)  # line 6
        nxt = P(x, xs[k] + alpha * (z - xs[k]) + (1 - alpha) * (xs[k] - xs[k - 1]), eps, norm)  # line 7
        fn, gn = f_and_grad(metric, nxt)
        xs.append(nxt), fs.append(fn), gs.append(gn)
        if fn > fmax:  # lines 8-9
            fmax, xmax, gmax = fn, nxt, gn
    return xmax, fmax


def test_checkpoints_are_the_papers():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 5, 10, 20, 37, 100, 250):
        assert checkpoints(n) == paper_checkpoints(n)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("which", ["cnn", "lower"])
def test_apgd_matches_algorithm_1(norm, eps, which, cnn_metric, lower_metric, small_images):
    metric = cnn_metric if which == "cnn" else lower_metric
    images = small_images[:3]
    attack = APGD(norm=norm, eps=eps, steps=25, restarts=2)
    out = attack.run(metric, images, seed=7)
    for i in range(images.shape[0]):
        g = image_generator(7, i)
        best, best_f = None, -math.inf
        for _ in range(2):  # random restarts, the best point kept
            start = random_start(images[i : i + 1], eps, norm, [g])
            xmax, fmax = reference_apgd(metric, images[i : i + 1], start, eps, norm, 25)
            if fmax > best_f:
                best, best_f = xmax, fmax
        assert (out[i : i + 1] - best).abs().max().item() <= 1e-5, i
    diff = (out - images).flatten(1)
    assert (diff.abs().amax(1) <= eps + 1e-6).all() if norm == "linf" else (diff.norm(dim=1) <= eps + 1e-4).all()


class ScriptedScore(Metric):
    """Scores that follow a script, call by call (plus a 1e-9 linear term in a fresh random direction each call,
    so the iterates move and their positions depend on every step size, momentum and reset): steers Algorithm 1
    through both halving conditions."""

    name = "test-scripted"
    range = (0.0, 1.0)

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = script, 0

    def score(self, images):
        g = torch.Generator().manual_seed(self.calls)
        direction = torch.randn(images.shape[1:], generator=g)
        value = self.script[self.calls] + 1e-9 * (images * direction).sum(dim=(1, 2, 3))
        self.calls += 1
        return value


#: f(x^(0)), f(x^(1)), ...: rising to w_1 = 6 (no halving); a drop then 4 rises of 5 below f_max to w_2 = 11
#: (condition 1 quiet, condition 2 fires: reset to x^(6)); x^(12) below the reset point's f_max = 6 but above
#: the replaced 5.5, so 3 rises of 4 to w_3 = 15 (condition 1 fires only if x^(11) now counts as f_max);
#: rising to the end, so the output is x^(25), wherever the steps, resets and momentum took it.
SCRIPT = [0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 5.5, 5.8] + [7 + i for i in range(13)]


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_apgd_matches_algorithm_1_through_condition_2(norm, eps, small_images):
    image = small_images[:1]
    log = []
    start = random_start(image, eps, norm, [image_generator(5, 0)])
    xmax, _ = reference_apgd(ScriptedScore(SCRIPT), image, start, eps, norm, 25, log=log)
    assert log[:3] == [(6, False, False), (11, False, True), (15, True, False)]
    out = APGD(norm=norm, eps=eps, steps=25).run(ScriptedScore(SCRIPT), image, seed=5)
    assert (out - xmax).abs().max().item() <= 1e-6


def test_a_stalled_search_halves_its_step(cnn_metric, small_images):
    """With 100 steps on a smooth metric some checkpoints fire (the schedule is exercised, not only the steps)."""
    from iqadef.plugins.attacks import apgd as module

    calls = []
    original = module.loss_and_gradient

    def spy(metric, images):
        calls.append(images.clone())
        return original(metric, images)

    module.loss_and_gradient = spy
    try:
        APGD(steps=30).run(cnn_metric, small_images[:2], seed=0)
    finally:
        module.loss_and_gradient = original
    assert len(calls) == 31  # the start and one gradient per step: one forward and backward each
    steps = [(b - a).abs().flatten(1).amax(1) for a, b in zip(calls, calls[1:])]
    assert min(s.min().item() for s in steps[-5:]) < max(s.max().item() for s in steps[:5])


def test_defaults_and_registration():
    attack = InstalledPlugins().get("attacks", "apgd")()
    assert (attack.norm, attack.steps, attack.restarts, attack.rho) == ("linf", 100, 1, 0.75)
    assert attack.bound() == pytest.approx(8 / 255) and attack.label == "apgd"
    assert APGD(norm="l2").bound() == 0.5 and APGD(norm="l2", eps=1.5).bound() == 1.5
    assert not attack.black_box


def test_each_image_is_attacked_on_its_own(cnn_metric, small_images):
    attack = APGD(steps=12)
    batch = attack.run(cnn_metric, small_images, seed=4)
    assert torch.allclose(batch[:1], attack.run(cnn_metric, small_images[:1], seed=4), atol=1e-5)


def _rise(metric, clean, adv):
    with torch.no_grad():
        sign = 1 if metric.higher_is_better else -1
        return sign * (metric.score(adv) - metric.score(clean))


def test_apgd_raises_tiny_iqa_within_eps_and_beats_ifgsm(tiny_iqa, bundled_images):
    eps = 10 / 255
    registry = InstalledPlugins()
    ifgsm = registry.get("attacks", "ifgsm")(eps=eps)
    for norm, budget in (("linf", eps), ("l2", 2.0)):
        out = APGD(norm=norm, eps=budget, steps=30).run(tiny_iqa, bundled_images, seed=1)
        diff = (out - bundled_images).flatten(1)
        assert (diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)).max() <= budget + 1e-5
        assert (_rise(tiny_iqa, bundled_images, out) > 0).all()
    apgd_rise = _rise(tiny_iqa, bundled_images, APGD(eps=eps).run(tiny_iqa, bundled_images, seed=1))
    ifgsm_rise = _rise(tiny_iqa, bundled_images, ifgsm.run(tiny_iqa, bundled_images, seed=1))
    assert (apgd_rise >= ifgsm_rise - 1e-4).all(), (apgd_rise, ifgsm_rise)


# -- every built-in metric (random weights in the official layouts for the three study metrics) -------------


def _official(tmp_path, name):
    from iqadef.plugins.metrics.linearity import Linearity, LinearityNet
    from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet
    from iqadef.plugins.metrics.spaq import SPAQ, SPAQBaselineNet

    with torch.device("meta"):
        net = {"metaiqa": MetaIQANet, "spaq": SPAQBaselineNet, "linearity": LinearityNet}[name]()
    state = random_state(net, seed=0)
    path = tmp_path / f"{name}.pth"
    if name == "metaiqa":
        torch.save(state, path)
        return MetaIQA(resize=64, weights_path=str(path)).load("cpu")
    if name == "spaq":
        torch.save({"state_dict": state}, path)
        return SPAQ(patch_size=32, stride=16, weights_path=str(path)).load("cpu")
    torch.save({"model": state, "k": [0.5, 2.0, 3.0], "b": [50.0, -1.0, -2.0]}, path)
    return Linearity(resize=[32, 48], weights_path=str(path)).load("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metaiqa", "spaq", "linearity"])
def test_apgd_raises_every_built_in_metric(name, tmp_path, small_images):
    metric = _official(tmp_path, name)
    images = small_images[:2]
    out = APGD(steps=10).run(metric, images, seed=0)
    assert (out - images).abs().max() <= 8 / 255 + 1e-6
    assert (_rise(metric, images, out) > 0).all()
