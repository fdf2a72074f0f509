"""Each reference attack against a loop written here in the reference code's own style.

The loops follow the study's runners line by line (``robustness_benchmark/methods/*/run.py`` of
MSU_Metrics_Robustness_Benchmark, ``metrics/methods/*/run.py`` of adversarial-defenses-for-iqa, the
``Color`` attacker for AdvCF): ``Variable``-style leaf tensors, ``.backward()``, in-place ``.data``
updates, numpy/scipy where the reference uses them. They share no code with the plugins. The
reference runs one image at a time, so every loop is run per image and compared with the plugin's
result for the whole batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from iqadef.core.plugins import InstalledPlugins

EPS_255 = 10 / 255


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins()


def run_plugin(registry, name, metric, images, **params):
    return registry.get("attacks", name)(**params).run(metric, images, seed=0)


def per_image(reference, images, *args, **kwargs):
    return torch.cat([reference(images[i : i + 1], *args, **kwargs) for i in range(images.shape[0])])


def assert_same_up_to_rounding(got, expected):
    """Adam divides by sqrt(v) + 1e-8: on the few pixels whose gradient is ~1e-7 (the metric and a
    fidelity term nearly cancel), a one-ulp difference in the fidelity term (the reference's Haar
    matrices hold float32 1/sqrt(2), iqadef averages 2x2 blocks) moves them by a part of a step.
    Measured: mean |diff| ~4e-7 and <1% of pixels beyond 1e-5; a different algorithm gives ~50%."""
    diff = (got - expected).abs()
    assert diff.mean().item() < 2e-6
    assert (diff > 1e-5).float().mean().item() < 0.02


def score_loss(metric, x):
    """The runners' ``1 - score / metric_range`` (batch of one)."""
    return (1 - metric(x) / metric.span).sum()


# -- FGSM, MI-FGSM, AMI-FGSM, MADC (MSU benchmark) ---------------------------------------------------
def reference_fgsm(image, metric):
    x = image.clone().requires_grad_(True)
    score_loss(metric, x).backward()
    x.data -= EPS_255 * torch.sign(x.grad)
    x.data.clamp_(0.0, 1.0)
    return x.data.clamp(0, 1)


def reference_mifgsm(image, metric, iters=10, alpha=1 / 255, nu=1.0):
    p = torch.zeros_like(image, requires_grad=True)
    g_prev = 0
    for _ in range(iters):
        res = image + p
        res.data.clamp_(0.0, 1.0)
        score_loss(metric, res).backward()
        g = p.grad + g_prev * nu
        g_prev = g
        p.data -= alpha * torch.sign(g)
        p.data.clamp_(-EPS_255, EPS_255)
        p.grad.zero_()
    return (image + p).data.clamp(0, 1)


def reference_amifgsm(image, metric, iters=10, nu=1.0):
    x = image.clone().requires_grad_(True)
    g_prev = 0
    for _ in range(iters):
        score_loss(metric, x).backward()
        g = x.grad + g_prev * nu
        g_prev = g
        x.data -= EPS_255 / iters * torch.sign(g)
        x.data.clamp_(0.0, 1.0)
        x.grad.zero_()
    return x.data.clamp(0, 1)


def reference_madc(image, metric, lr=0.001, eps=EPS_255, iters=8):
    init = image.clone()
    x = image.clone().requires_grad_(True)
    for i in range(iters):
        score_loss(metric, x).backward()
        g2 = x.grad.clone()
        x.grad.zero_()
        if i < 1:
            pg = g2.clone()
        else:
            (((x - init) ** 2).mean() ** 0.5).backward()
            g1 = x.grad.clone()
            x.grad.zero_()
            pg = g2 - (g1 * g2).sum() / (g1 * g1).sum() * g1
        x.data -= lr * torch.sign(pg)
        x.grad.zero_()
        cur = ((x - init) ** 2).mean() ** 0.5
        while cur > eps:
            cur.backward()
            x.data -= 0.0005 * torch.sign(x.grad)
            x.grad.zero_()
            x.data.clamp_(0.0, 1)
            cur = ((x - init) ** 2).mean() ** 0.5
        x.data.clamp_(0.0, 1.0)
    return x.data.clamp(0, 1)


@pytest.mark.parametrize(
    "name, reference, params",
    [
        ("fgsm", reference_fgsm, {}),
        ("mifgsm", reference_mifgsm, {}),
        ("amifgsm", reference_amifgsm, {}),
        ("madc", reference_madc, {}),
        ("madc", reference_madc, {"lr": 0.01, "eps": 0.01}),  # the RMSE bound is active
    ],
)
def test_sign_attacks_match_the_reference_loops(registry, cnn_metric, small_images, name, reference, params):
    expected = per_image(reference, small_images, cnn_metric, **params)
    got = run_plugin(registry, name, cnn_metric, small_images, **params)
    if name == "madc":
        # iqadef projects on (x - x0), the reference on its scaled copy dRMSE/dx: a projected component
        # that is ~0 can round to the other sign, moving that pixel by one step (1 of 49152 here).
        diff = (got - expected).abs()
        assert diff.max().item() <= params.get("lr", 0.001) + 1e-6
        assert (diff > 1e-6).sum().item() <= 3
    else:
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# -- UAP training (adversarial-defenses-for-iqa methods/uap/train.py) -------------------------------
def test_uap_training_matches_the_reference_loop(cnn_metric, small_images):
    from iqadef.plugins.attacks.uap import train_uap

    # The reference draws ``next(iter(loader))`` (a random batch) per step; both get the same batches.
    batches = [small_images[:2], small_images[2:], small_images[1:3]]
    noise = torch.zeros((1, 3, 64, 64)) + 0.0001
    noise.requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=0.01)
    for _ in range(2):
        for y in batches:
            res = y + noise
            res.data.clamp_(min=0.0, max=1.0)
            loss = 1 - cnn_metric(res).mean() / cnn_metric.span
            optimizer.zero_grad()
            loss.backward()
            noise.grad = torch.nan_to_num(noise.grad)
            optimizer.step()
            noise.data.clamp_(min=-0.1, max=0.1)
    got = train_uap(cnn_metric, batches, size=64, eps=0.1, lr=0.01, epochs=2)
    torch.testing.assert_close(got, noise.detach()[0], atol=1e-6, rtol=0)


# -- Zhang et al. with SSIM (adversarial-defenses-for-iqa zhang-et-al-dists/run.py, SSIM loss) ------
def test_zhang_ssim_matches_the_reference_loop(registry, cnn_metric, small_images):
    from iqadef.plugins.attacks._perceptual import ssim_distance  # checked against scikit-image in test_zhang

    def reference(image):
        x = image.clone().requires_grad_(True)
        clean = image.clone()
        optimizer = torch.optim.Adam([x], lr=0.005)
        for _ in range(10):
            loss = ssim_distance(x, clean).sum() - cnn_metric(x).sum() / cnn_metric.span
            loss.backward()
            x.grad.data[torch.isnan(x.grad.data)] = 0
            optimizer.step()
            x.data.clamp_(min=0, max=1)
            x.data[torch.isnan(x.data)] = 0
            optimizer.zero_grad()
        return x.data.clamp(0, 1)

    expected = per_image(reference, small_images)
    got = run_plugin(registry, "zhang-ssim", cnn_metric, small_images)
    assert_same_up_to_rounding(got, expected)


# -- Korhonen et al. (MSU benchmark methods/korhonen-et-al/run.py) ----------------------------------
DISC = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=bool)


def reference_activity_map(image_255: torch.Tensor) -> np.ndarray:
    """``makeSpatialActivityMap(compress_image * 255)``: cv2's float RGB->YCrCb luma rescaled as the
    reference does, scipy's default (axis -1) Sobel, border zeroed, divided by the maximum, dilated.
    ``grey_dilation`` with a symmetric footprint equals ``cv2.dilate`` (which ignores outside pixels):
    the reflected border values are inside the disc already."""
    im = image_255[0].permute(1, 2, 0).numpy().astype(np.float32)
    luma = im[..., 0] * 0.299 + im[..., 1] * 0.587 + im[..., 2] * 0.114
    luma = (luma * (235 - 16) + 16) / 255.0
    sob = ndimage.sobel(luma)
    zero = np.zeros_like(sob)
    zero[1:-1, 1:-1] = sob[1:-1, 1:-1]
    maxval = zero.max()
    if maxval == 0:
        zero = zero + 1
        maxval = 1
    return ndimage.grey_dilation(zero / maxval, footprint=DISC)


def reference_korhonen(image, metric, lr=0.005, iters=10):
    sp_map = torch.from_numpy((reference_activity_map(image * 255) / 255).astype(np.float32))[None, None]
    x = image.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(iters):
        score_loss(metric, x).backward()
        x.grad = torch.nan_to_num(x.grad)
        x.grad *= sp_map
        opt.step()
        x.data.clamp_(0.0, 1.0)
        opt.zero_grad()
    return x.data.clamp(0, 1)


def test_activity_map_is_the_references_signed_one_direction_sobel(small_images):
    from iqadef.plugins.attacks.korhonen import spatial_activity_map

    got = spatial_activity_map(small_images)
    expected = np.stack([reference_activity_map(small_images[i : i + 1] * 255) for i in range(len(small_images))])
    np.testing.assert_allclose(got[:, 0].numpy(), expected, atol=1e-5, rtol=0)
    assert (got < 0).any()  # signed: where the luma falls to the right


def test_activity_map_edge_cases_follow_the_reference():
    from iqadef.plugins.attacks.korhonen import spatial_activity_map

    falling = torch.linspace(1, 0, 12).expand(1, 3, 10, 12).contiguous()  # every interior value < 0: max is 0
    flat = torch.full((1, 3, 10, 12), 0.3)
    for image in (falling, flat):
        np.testing.assert_allclose(
            spatial_activity_map(image)[0, 0].numpy(), reference_activity_map(image * 255), atol=1e-5, rtol=1e-6
        )
    assert spatial_activity_map(falling).min() < -100  # the max-is-0 branch: 1 + the raw (scaled) Sobel


def test_korhonen_matches_the_reference_loop(registry, cnn_metric, small_images):
    expected = per_image(reference_korhonen, small_images, cnn_metric)
    got = run_plugin(registry, "korhonen", cnn_metric, small_images)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_korhonen_keeps_the_references_mask_scale(registry, cnn_metric, small_images):
    """Adam is scale-invariant except for its eps (1e-8): with the reference's /255 many masked
    gradients are comparable to eps, so dropping the factor changes the result."""
    from iqadef.plugins.attacks._common import adam_on_images
    from iqadef.plugins.attacks.korhonen import spatial_activity_map

    unscaled = adam_on_images(cnn_metric, small_images, lr=0.005, iters=10, mask=spatial_activity_map(small_images))
    got = run_plugin(registry, "korhonen", cnn_metric, small_images)
    assert (got - unscaled).abs().max().item() > 1e-3


def test_korhonen_sobel_magnitude_option(registry, cnn_metric, small_images):
    from iqadef.plugins.attacks.korhonen import spatial_activity_map

    magnitude = spatial_activity_map(small_images, magnitude=True)
    assert magnitude.min().item() >= 0.0 and magnitude.amax(dim=(1, 2, 3)).tolist() == [1.0] * len(small_images)
    adv = run_plugin(registry, "korhonen", cnn_metric, small_images, sobel_magnitude=True)
    assert not torch.equal(adv, run_plugin(registry, "korhonen", cnn_metric, small_images))
    with torch.no_grad():
        assert cnn_metric(adv).mean() > cnn_metric(small_images).mean()


# -- SSAH (adversarial-defenses-for-iqa metrics/methods/ssah/run.py) --------------------------------
def haar_low_matrix(n: int) -> torch.Tensor:
    """The reference's DWT low-pass matrix for the Haar wavelet (rows of 1/sqrt(2) pairs), n even."""
    matrix = torch.zeros(n // 2, n)
    for i in range(n // 2):
        matrix[i, 2 * i] = matrix[i, 2 * i + 1] = 2**-0.5
    return matrix


def reference_ssah(image, metric, lr=0.001, lambda_lf=0.1):
    h, w = image.shape[-2:]
    padded = torch.zeros((1, 3, h + h % 2, w + w % 2))
    padded[:, :, :h, :w] = image
    low_0, low_1 = haar_low_matrix(padded.shape[2]), haar_low_matrix(padded.shape[3])

    def idwt_dwt(x):  # matrix_Low_0.t() @ (matrix_Low_0 @ x @ matrix_Low_1) @ matrix_Low_1.t()
        return low_0.t() @ (low_0 @ x @ low_1.t()) @ low_1

    inputs_ll = idwt_dwt(padded)
    x = padded.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    smooth_l1 = torch.nn.SmoothL1Loss(reduction="sum")
    for _ in range(10):
        total = score_loss(metric, x) + lambda_lf * smooth_l1(idwt_dwt(x), inputs_ll)
        optimizer.zero_grad()
        total.backward()
        x.grad = torch.nan_to_num(x.grad)
        optimizer.step()
        x.data.clamp_(0.0, 1.0)
    return x.data.clamp(0, 1)[:, :, :h, :w]


@pytest.mark.parametrize("size", [(63, 64), (64, 63), (63, 63), (64, 64)])
def test_ssah_matches_the_reference_loop(registry, cnn_metric, small_images, size):
    images = small_images[:2, :, : size[0], : size[1]].contiguous()
    expected = per_image(reference_ssah, images, cnn_metric)
    got = run_plugin(registry, "ssah", cnn_metric, images)
    assert got.shape == images.shape
    assert_same_up_to_rounding(got, expected)


def test_ssah_score_unpadded_option_scores_the_image_at_its_own_size(registry, cnn_metric, small_images):
    images = small_images[:2, :, :63, :].contiguous()
    option = run_plugin(registry, "ssah", cnn_metric, images, score_unpadded=True)
    assert option.shape == images.shape
    assert (option - per_image(reference_ssah, images, cnn_metric)).abs().max().item() > 1e-4
    default = run_plugin(registry, "ssah", cnn_metric, images)
    with torch.no_grad():
        assert cnn_metric(option).mean() > cnn_metric(images).mean()
        assert cnn_metric(default).mean() > cnn_metric(images).mean()
    # On even sizes there is nothing to pad: the option changes nothing.
    even = small_images[:2]
    assert torch.equal(
        run_plugin(registry, "ssah", cnn_metric, even, score_unpadded=True),
        run_plugin(registry, "ssah", cnn_metric, even),
    )


# -- AdvCF (the ``Color`` attacker of the IQA port) -------------------------------------------------
def reference_advcf_loss(images, paras, metric, pieces=64):
    """The ``Color`` attacker's ``step`` up to ``loss.backward()`` (``torch.mean`` over the batch)."""
    batch_size = images.shape[0]
    paras_sum = torch.sum(paras.view(batch_size, 3, -1), dim=2, keepdim=True)
    l2 = torch.sum(((paras / paras_sum - 1 / pieces) ** 2).view(batch_size, -1), dim=1)
    param = paras[:, :, None, None]
    adv = images * 0
    for i in range(pieces):
        adv += torch.clamp(images - 1.0 * i / pieces, 0, 1.0 / pieces) * param[:, :, :, :, i]
    adv *= pieces / (torch.sum(param, 4) + 1e-30)
    adv[adv > 1] = 1
    adv[adv < 0] = 0
    score = metric(adv)
    return torch.mean(1 - score / metric.span + (0.5 * l2).sum()), adv, score


def reference_advcf(images, metric, iters=10, pieces=64):
    """The ``Color`` attacker's ``run`` for a batch (one best for all)."""
    paras = (torch.ones(images.shape[0], 3, pieces) * 1 / pieces).requires_grad_(True)
    optimizer = torch.optim.Adam([paras], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    best_score, best = -100000, images.clone()
    for _ in range(iters):
        paras.data = torch.clamp(paras.data, min=0)
        loss, adv, score = reference_advcf_loss(images, paras, metric, pieces)
        optimizer.zero_grad()
        loss.backward()
        paras.grad = torch.nan_to_num(paras.grad)
        optimizer.step()
        if score.max() > best_score:
            best_score = score.max()
            best = (torch.round(adv * 255) / 255).detach().clone()
    return best.clamp(0, 1)


def reference_advcf_gradient(images, weights, metric):
    paras = weights.clone().requires_grad_(True)
    reference_advcf_loss(images, paras, metric)[0].backward()
    return paras.grad


@pytest.mark.parametrize("batch_mean", [False, True])
def test_advcf_gradient_passes_where_the_curve_reaches_zero(registry, cnn_metric, batch_mean):
    """Curves whose lowest pieces have weight 0 (Adam gets there after one step) map dark pixels to
    exactly 0. The reference's masked assignment lets the gradient through there, ``clamp`` does not."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand((2, 3, 32, 32), generator=g) * 0.98  # 12% below 1/8; none at 1 (rounding luck there)
    weights = torch.rand((2, 3, 64), generator=g) + 0.1
    weights[..., :8] = 0.0
    attack = registry.get("attacks", "advcf")(batch_mean=batch_mean)
    with torch.enable_grad():
        w = weights.clone().requires_grad_(True)
        total, _, adv = attack.objective(cnn_metric, images, w)
        (got,) = torch.autograd.grad(total, w)
    assert (adv == 0).float().mean().item() > 0.1
    if batch_mean:  # the reference's code on the batch
        expected = reference_advcf_gradient(images, weights, cnn_metric)
    else:  # the reference as the study ran it, one image at a time
        expected = torch.cat(
            [reference_advcf_gradient(images[i : i + 1], weights[i : i + 1], cnn_metric) for i in range(2)]
        )
    assert expected[..., :8].abs().min().item() > 0  # the pieces under the zero output do get gradient
    # clamp's zero gradient at 0 changes these pieces' gradients by ~1e-3 (relative); rounding, by ~1e-6.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def assert_quantised_close(got, expected):
    """Equal up to float rounding: a value may land on the other side of a 1/255 rounding boundary."""
    diff = (got - expected).abs()
    assert diff.max().item() <= 1 / 255 + 1e-6
    assert (diff > 1e-6).float().mean().item() < 1e-3


def test_advcf_matches_the_reference_loop_image_by_image(registry, cnn_metric, small_images):
    expected = per_image(reference_advcf, small_images, cnn_metric)
    assert_quantised_close(run_plugin(registry, "advcf", cnn_metric, small_images), expected)


def test_advcf_batch_mean_matches_the_reference_loop_on_a_batch(registry, cnn_metric, small_images):
    expected = reference_advcf(small_images, cnn_metric)
    got = run_plugin(registry, "advcf", cnn_metric, small_images, batch_mean=True)
    assert_quantised_close(got, expected)
    # The coupling is real: the same images one at a time give another result.
    assert (got - run_plugin(registry, "advcf", cnn_metric, small_images)).abs().max().item() > 1e-2


def test_advcf_clip_passes_gradient_at_the_bounds():
    from iqadef.plugins.attacks.advcf import clip_like_masked_assignment

    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    out = clip_like_masked_assignment(x)
    out.sum().backward()
    assert out.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
