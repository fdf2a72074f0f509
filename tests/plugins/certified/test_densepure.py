"""``densepure``: the step, the respaced reverse chain and the certificate against reference-style code
(``katiashh/certified-iqa-defenses`` ``DensePure-master/calc_dp_*.py``, its modified ``guided_diffusion`` ``p_sample``),
the closed form on a linear metric, the majority vote, and the guarantee under perturbations within the radius. A
tiny guided-diffusion UNet in the official layout stands in for the 2.2 GB checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from toy_plugins import ToyMetric

from iqadef import Metric
from iqadef.core.weights import WeightSpec
from iqadef.plugins.attacks.pgd_l2 import PGDL2
from iqadef.plugins.certified.densepure import DensePure, majority, nearest_step, respaced_betas, reverse_chain
from iqadef.plugins.defences import diffpure
from iqadef.plugins.defences._guided_diffusion import GuidedUNet, GuidedUNetConfig

TINY = GuidedUNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
)


class LinearMetric(Metric):
    """f(x) = w . x + c; remembers the images it scored."""

    name = "linear"
    range = (0.0, 10.0)

    def __init__(self, w: torch.Tensor, c: float = 0.0):
        super().__init__()
        self.w, self.c = w, c

    def score(self, images):
        self.seen = images
        return (images * self.w).flatten(1).sum(1) + self.c


class ConstantMetric(Metric):
    name = "constant"
    range = (0.0, 10.0)

    def score(self, images):
        return torch.full((images.shape[0],), 3.3)


def images(n: int = 2, size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    return torch.stack(
        [
            torch.stack([torch.sin(xx / (2 + i)), torch.cos(yy / (3 + i)), torch.sin((xx + yy) / 5)]) * 0.4 + 0.5
            for i in range(n)
        ]
    )


@pytest.fixture
def tiny_guided(monkeypatch, tmp_path):
    """``guided-tiny``: the tiny UNet with zero weights (epsilon 0, variance value 0) or random ones."""

    def install(zero: bool) -> str:
        torch.manual_seed(1)
        state = {
            k: (torch.zeros_like(v) if zero else torch.randn_like(v) * 0.05)
            for k, v in GuidedUNet(TINY).state_dict().items()
        }
        path = tmp_path / f"tiny_{zero}.pt"
        torch.save(state, path)
        monkeypatch.setitem(
            diffpure.GUIDED_MODELS, "guided-tiny", diffpure.GuidedModel(TINY, WeightSpec(path.name, ()))
        )
        return str(path)

    return install


def reference_step(sigma: float, sqrt_recipm1: np.ndarray) -> int:
    """``GuidedDiffusion.__init__`` of calc_dp_*.py, loop for loop."""
    sigma = sigma * 2
    for t in range(len(sqrt_recipm1) - 1):
        if sqrt_recipm1[t] < sigma and sqrt_recipm1[t + 1] >= sigma:
            if sigma - sqrt_recipm1[t] > sqrt_recipm1[t + 1] - sigma:
                return t + 1
            return t
    return len(sqrt_recipm1) - 1


def reference_reverse(model, noisy: torch.Tensor, sigma: float, num_t_steps: int, abar: np.ndarray, draw):
    """``image_editing_sample((x - 0.5) * 2)`` with ``use_t_steps`` and the respacing of the modified
    ``p_sample`` (numpy float64 coefficients, learned-range variance, x_0 clipped), then ``(x + 1) * 0.5``.
    ``draw(shape)`` gives the reverse noise of a step that adds it (the reference also draws, and masks, at t = 0)."""
    t = reference_step(sigma, np.sqrt(1.0 / abar - 1))
    x = (1 / (1 + (sigma * 2) ** 2)) ** 0.5 * ((noisy - 0.5) * 2)
    inter = t / num_t_steps
    indices = [round(t - i * inter) for i in range(num_t_steps)]
    chain = (indices + [0])[::-1]
    betas = np.array([min(1 - abar[b] / abar[a], 0.999) for a, b in zip(chain, chain[1:])])
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - ac_prev) / (1.0 - ac)
    plvc = np.log(np.append(pv[1], pv[1:]))
    c1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
    c2 = (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac)
    for i in range(len(indices)):
        tt = len(indices) - i - 1
        out = model(x, torch.full((x.shape[0],), float(indices[i])))
        eps, v = out[:, :3], out[:, 3:]
        frac = (v + 1) / 2
        log_var = frac * math.log(betas[tt]) + (1 - frac) * plvc[tt]
        x0 = (math.sqrt(1 / ac[tt]) * x - math.sqrt(1 / ac[tt] - 1) * eps).clamp(-1, 1)
        mean = c1[tt] * x0 + c2[tt] * x
        x = mean + (torch.exp(0.5 * log_var) * draw(x.shape) if tt != 0 else 0.0)
    return (x + 1) * 0.5


def test_the_step_and_the_chain_are_the_references():
    abar = diffpure.alphas_cumprod("guided-256")
    recipm1 = np.sqrt(1.0 / abar.numpy() - 1)
    for sigma in (0.01, 0.12, 0.25, 0.5, 1.0):
        assert nearest_step(sigma, abar) == reference_step(sigma, recipm1)
    assert nearest_step(0.12, abar) == 70  # levels 0.2381 (t 69), 0.2414 (t 70): 0.24 is nearer 70
    assert nearest_step(0.1195, abar) == 69  # 0.239: nearer 69 (the first step at or above, ddrs's, is 70)
    assert reverse_chain(70, 2) == [70, 35] and reverse_chain(69, 2) == [69, 34] and reverse_chain(71, 2) == [71, 36]
    want = [1 - float(abar[35] / abar[0]), 1 - float(abar[70] / abar[35])]
    assert respaced_betas([70, 35], abar) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="largest noise level"):
        nearest_step(1000.0, abar)
    with pytest.raises(ValueError, match="smallest noise level"):  # the reference would take the last step
        nearest_step(1e-4, abar)


@pytest.mark.parametrize("steps", [2, 3])
def test_the_reverse_chain_matches_the_reference_p_sample(tiny_guided, steps):
    path = tiny_guided(zero=False)
    dp = DensePure(model="guided-tiny", weights_path=path, steps=steps, sigma=0.25, n=4, n0=1).load("cpu")
    x = images(2)
    noisy = x + 0.25 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    w = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(4))
    metric = LinearMetric(w)
    with torch.no_grad():
        got = dp.base_sampler(x, seed=7)(metric, noisy, [0, 1])
    seen = metric.seen
    gens = [dp.reverse_generator(7, 0, i, torch.device("cpu")) for i in range(2)]

    def draw(shape):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens])

    with torch.no_grad():
        want = reference_reverse(
            dp.diffusion.unet, noisy, 0.25, steps, diffpure.alphas_cumprod("guided-tiny").numpy(), draw
        )
    assert torch.allclose(seen, want.float(), atol=2e-5), float((seen - want).abs().max())
    assert torch.allclose(got, metric.score(want.float()), atol=1e-3)
    assert dp.noise_sigma() == 0.25  # the noise is sigma itself (the scale makes it the diffusion's x_t)


def test_a_constant_metric_is_certified_in_closed_form(tiny_guided):
    """Every copy in one bin: pA = alpha^(1/n) (Clopper-Pearson with n_A = n), radius sigma Phi^-1(alpha^(1/n))."""
    path = tiny_guided(zero=False)
    for votes in (1, 3):
        dp = DensePure(model="guided-tiny", weights_path=path, n=12, n0=3, alpha=0.01, votes=votes, batch=16).load(
            "cpu"
        )
        out = dp.smooth(ConstantMetric(), images(2), seed=0)
        assert out.bin.tolist() == [4, 4]  # 3.3 is in (3, 4]: bin 4
        want = 0.12 * stats.norm.ppf(0.01 ** (1 / 12))
        assert torch.allclose(out.radius.double(), torch.full((2,), want, dtype=torch.float64), atol=1e-6)
        assert dp.samples_per_image() == 15 * votes


def test_a_linear_metric_after_a_zero_model_is_certified_in_closed_form(tiny_guided):
    """A model predicting epsilon = 0 (variance value 0) makes the chain affine in the noisy copy plus Gaussian
    reverse noise: f((x_0 + 1)/2) is Gaussian with a known mean and variance, so pA and the radius
    sigma Phi^-1(pA) are known; the certified radius approaches it from below. (The zero UNet's output is
    checked, then replaced by the same zeros without the forward, for speed: 4100 copies.)"""
    path = tiny_guided(zero=True)
    sigma = 0.05
    dp = DensePure(model="guided-tiny", weights_path=path, sigma=sigma, n=4000, n0=100, batch=1000).load("cpu")
    probe = torch.rand(2, 3, 16, 16)
    assert torch.equal(dp.diffusion._predict(probe, 7), torch.zeros(2, 6, 16, 16))
    dp.diffusion._predict = lambda x, step: torch.zeros(x.shape[0], 6, *x.shape[2:])
    abar = diffpure.alphas_cumprod("guided-tiny")
    t, chain, scale = dp.chain()
    betas = np.array(respaced_betas(chain, abar))
    ac = np.cumprod(1 - betas)
    # step 1 (t' = 1): x_1 = (c1 / sqrt(ac1) + c2) x_t + s z; step 0: x_0 = x_1 / sqrt(ac0)
    c1 = betas[1] * math.sqrt(ac[0]) / (1 - ac[1])
    c2 = (1 - ac[0]) * math.sqrt(1 - betas[1]) / (1 - ac[1])
    pv1 = betas[1] * (1 - ac[0]) / (1 - ac[1])
    s = math.exp(0.5 * (0.5 * math.log(betas[1]) + 0.5 * math.log(pv1)))
    a = (c1 / math.sqrt(ac[1]) + c2) * scale / math.sqrt(ac[0])  # x_0 = a (2 noisy - 1) + b z
    b = s / math.sqrt(ac[0])
    shape = (3, 16, 16)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    w = w / w.norm()
    x = torch.full((1, *shape), 0.5)  # x_0 stays far from the clipping at -1 and 1
    # (x_0 + 1)/2 = a (noisy - 0.5) + 0.5 + b z / 2: f ~ N(f(x), ||w||^2 (a^2 sigma^2 + b^2 / 4)), ||w|| = 1
    spread = math.sqrt((a * sigma) ** 2 + b**2 / 4)
    w = w * (0.35 / spread)  # the score's std 0.35: pA = P(|N(0, 0.35^2)| <= 0.5) ~ 0.85
    c = 5.5 - float((x * w).sum())
    out = dp.smooth(LinearMetric(w, c), x, seed=1)
    p_true = stats.norm.cdf(0.5 / 0.35) - stats.norm.cdf(-0.5 / 0.35)
    r_true = sigma * stats.norm.ppf(p_true)
    assert int(out.bin) == 6
    assert float(out.radius) <= r_true + 1e-9 and float(out.radius) > r_true - 0.01, (float(out.radius), r_true)


def test_majority_takes_the_most_frequent_bin_and_the_first_on_a_tie():
    scores = torch.tensor([[1.1, 2.2, 2.7, 0.5], [0.4, 1.5, 0.6, 1.9], [3.5, 3.1, 0.2, 4.4]])
    classes = scores.floor().long()
    assert majority(scores, classes).tolist() == pytest.approx([2.2, 0.4, 3.5])


def test_votes_are_the_majority_of_runs_with_successive_reverse_seeds(tiny_guided):
    """votes: 3 with reverse_seed 0 is, copy by copy, the majority bin of three runs with reverse seeds 0, 1, 2
    (DensePure's merge_results.py); the smoothing noise is the same in all of them."""
    path = tiny_guided(zero=False)
    metric = ToyMetric()
    metric.range = (0.0, 2.0)
    x = images(2)
    kw = dict(model="guided-tiny", weights_path=path, n=12, n0=2, bins=8, sigma=0.25)
    voted = DensePure(votes=3, batch=5, **kw).load("cpu").noisy_scores(metric, x, seed=4)
    runs = [DensePure(reverse_seed=r, batch=7, **kw).load("cpu").noisy_scores(metric, x, seed=4) for r in range(3)]
    stacked = torch.stack(runs, dim=2).reshape(-1, 3)
    from iqadef.core.smoothing import score_bins

    want = majority(stacked, score_bins(stacked, 0.0, 2.0, 8)).reshape(2, 12)
    assert torch.allclose(voted, want, atol=1e-5)
    assert not torch.allclose(runs[0], runs[1])  # the reverse chains are random
    # the values do not depend on the noise batch (nor on the other images)
    alone = DensePure(votes=3, batch=64, **kw).load("cpu").noisy_scores(metric, x[:1], seed=4)
    assert torch.allclose(alone, voted[:1], atol=1e-5)


@pytest.mark.slow
def test_densepure_guarantee_within_the_radius(tiny_guided):
    """Random directions and PGD-L2 at 0.9 x the certified radius keep the smoothed bin (or abstain)."""
    path = tiny_guided(zero=False)
    metric = ToyMetric()
    x = images(2)
    dp = DensePure(model="guided-tiny", weights_path=path, sigma=0.1, n=150, n0=20, bins=2, batch=170).load("cpu")
    scores = dp.noisy_scores(metric, x, seed=9, samples=40)
    metric.range = (float(scores.min()) - 1.0, float(scores.max()) + 1.0)
    cert = dp.smooth(metric, x, seed=0)
    assert bool((cert.bin >= 0).all() and (cert.radius > 0).all()), (cert.bin, cert.radius)
    for i in range(x.shape[0]):
        r = 0.9 * float(cert.radius[i])
        xi = x[i : i + 1]
        d = torch.randn(xi.shape, generator=torch.Generator().manual_seed(10 + i))
        moved = [(xi + d / d.norm() * r).clamp(0, 1), PGDL2(eps=r, steps=5).run(metric, xi, seed=0)]
        for k, x2 in enumerate(moved):
            assert float((x2 - xi).norm()) <= r + 1e-5
            other = dp.smooth(metric, x2, seed=100 + k)
            assert int(other.bin) in (int(cert.bin[i]), -1), (i, k, other.bin, cert.bin[i])


@pytest.mark.slow
def test_densepure_guarantee_on_the_embedded_metric(tiny_guided):
    """tiny-iqa with its declared range in 10 bins after the reverse chain of a (tiny, random) diffusion model:
    random directions and PGD-L2 at 0.9 x each certified image's radius keep the smoothed bin (or abstain)."""
    from iqadef.plugins.metrics.embedded import TinyIQA

    path = tiny_guided(zero=False)
    metric = TinyIQA().load("cpu")
    x = images(2, 32)
    dp = DensePure(model="guided-tiny", weights_path=path, sigma=0.05, n=200, n0=20, alpha=1e-3, batch=110)
    dp = dp.load("cpu")
    cert = dp.smooth(metric, x, seed=0)
    certified = [i for i in range(x.shape[0]) if int(cert.bin[i]) >= 0 and float(cert.radius[i]) > 0]
    assert certified, (cert.bin, cert.radius)
    for i in certified:
        r = 0.9 * float(cert.radius[i])
        xi = x[i : i + 1]
        d = torch.randn(xi.shape, generator=torch.Generator().manual_seed(20 + i))
        attacked = PGDL2(eps=r, steps=5).run(metric, xi, seed=0)
        assert float(metric.score(attacked)) > float(metric.score(xi))  # the attack moves the plain metric
        for k, x2 in enumerate([(xi + d / d.norm() * r).clamp(0, 1), attacked]):
            assert float((x2 - xi).norm()) <= r + 1e-5
            other = dp.smooth(metric, x2, seed=200 + k)
            assert int(other.bin) in (int(cert.bin[i]), -1), (i, k, other.bin, cert.bin[i])
