"""The benchmark's spatial, colour and trained attacks: stadv, cadv, cnn-attack, cumulative-uap, generative-uap.

Each is compared with a loop written here in its reference runner's own style (adversarial-defenses-for-iqa
``metrics/methods/{stadv,cadv,cnn-attack}/``, MSU_Metrics_Robustness_Benchmark
``robustness_benchmark/methods/{cumulative,generative}-uap/train.py``): ``.backward()``, in-place ``.data``
updates, numpy where the reference uses it. Two pieces are shared with the plugins and tested on their own:
the networks' architectures (their key layouts against the reference's) and, for cadv, scipy's k-means
(the reference calls scikit-learn's ``KMeans``, which is not installed; both draw from a seeded generator).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from iqadef import ConfigError
from iqadef.core.plugins import InstalledPlugins
from iqadef.plugins.attacks import cadv as cadv_module
from iqadef.plugins.attacks import cnn_attack as cnn_module
from iqadef.plugins.attacks import cumulative_uap as cumulative_module
from iqadef.plugins.attacks import generative_uap as generative_module
from iqadef.plugins.attacks._unet import UnetGenerator

from .test_attacks import assert_bound, mean_gain, write_pngs

NEW_ATTACKS = ["stadv", "cadv", "cnn-attack", "cumulative-uap", "generative-uap"]


@pytest.fixture(scope="module")
def registry() -> InstalledPlugins:
    return InstalledPlugins()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def per_image(reference, images, *args, **kwargs):
    return torch.cat([reference(images[i : i + 1], *args, **kwargs) for i in range(images.shape[0])])


def test_listed_with_their_presets(registry):
    for name in NEW_ATTACKS:
        described = registry.get("attacks", name).describe()
        assert any(p.get("presets") for p in described["params"]), name


# == stadv (ADI metrics/methods/stadv/run.py) ==========================================================
def reference_flow_st(images, flows):
    H, W = images.size()[2], images.size()[3]
    basegrid = torch.stack(torch.meshgrid(torch.arange(0, H), torch.arange(0, W), indexing="ij"))
    sampling_grid = basegrid.unsqueeze(0).type(torch.float32) + flows
    sampling_grid_x = torch.clamp(sampling_grid[:, 1], 0.0, W - 1.0).type(torch.float32)
    sampling_grid_y = torch.clamp(sampling_grid[:, 0], 0.0, H - 1.0).type(torch.float32)
    x0 = torch.floor(sampling_grid_x).type(torch.int64)
    x1 = x0 + 1
    y0 = torch.floor(sampling_grid_y).type(torch.int64)
    y1 = y0 + 1
    x0, x1 = torch.clamp(x0, 0, W - 2), torch.clamp(x1, 0, W - 1)
    y0, y1 = torch.clamp(y0, 0, H - 2), torch.clamp(y1, 0, H - 1)
    Ia = images[:, :, y0[0, :, :], x0[0, :, :]]
    Ib = images[:, :, y1[0, :, :], x0[0, :, :]]
    Ic = images[:, :, y0[0, :, :], x1[0, :, :]]
    Id = images[:, :, y1[0, :, :], x1[0, :, :]]
    x0, x1, y0, y1 = x0.type(torch.float32), x1.type(torch.float32), y0.type(torch.float32), y1.type(torch.float32)
    wa = (x1 - sampling_grid_x) * (y1 - sampling_grid_y)
    wb = (x1 - sampling_grid_x) * (sampling_grid_y - y0)
    wc = (sampling_grid_x - x0) * (y1 - sampling_grid_y)
    wd = (sampling_grid_x - x0) * (sampling_grid_y - y0)
    return (wa.unsqueeze(0) * Ia + wb.unsqueeze(0) * Ib + wc.unsqueeze(0) * Ic + wd.unsqueeze(0) * Id).type(
        torch.float32
    )


def reference_flow_loss(flows, epsilon=1e-8):
    padded_flows = F.pad(flows, (1, 1, 1, 1), mode="constant", value=0)
    shifted_flows = [
        padded_flows[:, :, 2:, 2:],
        padded_flows[:, :, 2:, :-2],
        padded_flows[:, :, :-2, 2:],
        padded_flows[:, :, :-2, :-2],
    ]
    loss = 0
    for shifted_flow in shifted_flows:
        loss += torch.sum(
            torch.square(flows[:, 1] - shifted_flow[:, 1]) + torch.square(flows[:, 0] - shifted_flow[:, 0]) + epsilon
        )
    return loss.type(torch.float32)


def reference_stadv(image, model, lr=2.5):
    metric_range = model.span
    flows = torch.from_numpy(np.zeros((1, 2) + image.size()[2:]))
    flows.requires_grad = True
    opt = torch.optim.LBFGS([flows], lr=lr, max_iter=1, max_eval=25)

    def closure():
        opt.zero_grad()
        pert_out = reference_flow_st(image, flows)
        s_adv, s_other = model(pert_out), metric_range * 1.5
        if not model.higher_is_better:
            s_adv = metric_range - s_adv
            s_other = metric_range * 0.1
        L_final = 50 * (s_other / (s_adv + s_other)) + 1e-5 * reference_flow_loss(flows)
        L_final.backward()
        return L_final

    for _ in range(3):
        opt.step(closure)
    return reference_flow_st(image.clone(), flows).detach()


@pytest.mark.parametrize("metric_name", ["cnn_metric", "lower_metric"])
def test_stadv_matches_the_reference_loop(registry, request, small_images, metric_name):
    metric = request.getfixturevalue(metric_name)
    images = small_images[:2, :, :48, :40]  # not square: rows and columns must not be swapped
    got = registry.get("attacks", "stadv")().run(metric, images)
    expected = per_image(reference_stadv, images, metric)
    assert not torch.equal(got, images)
    torch.testing.assert_close(got, expected.clamp(0, 1), atol=0, rtol=0)


def test_stadv_raises_tiny_iqa_and_only_moves_pixels(registry, tiny_iqa, bundled_images):
    adv = registry.get("attacks", "stadv")().run(tiny_iqa, bundled_images)
    assert_bound(registry.get("attacks", "stadv")(), bundled_images, adv)
    assert mean_gain(tiny_iqa, bundled_images, adv) > 0
    # A warp: every output value lies between the smallest and largest input value of its channel.
    lo = bundled_images.amin(dim=(2, 3), keepdim=True)
    hi = bundled_images.amax(dim=(2, 3), keepdim=True)
    assert (adv >= lo - 1e-6).all() and (adv <= hi + 1e-6).all()


# == cumulative-uap (MRB robustness_benchmark/methods/cumulative-uap/train.py) ===========================
def test_cumulative_uap_training_matches_the_reference_loop(cnn_metric, small_images):
    batches = [small_images[:2], small_images[2:], small_images[1:3]]  # the same batches for both
    universal_noise = torch.zeros((1, 3, 64, 64)) + 0.0001
    universal_noise.requires_grad_(True)
    for _ in range(2):
        for y in batches:
            res = y + universal_noise
            a = 1 - cnn_metric(res).mean() / cnn_metric.span
            a.backward()
            delta = universal_noise.grad.clone()
            universal_noise.grad.data.zero_()
            universal_noise = universal_noise - delta
            universal_noise.data.clamp_(min=-0.1, max=0.1)
            universal_noise = universal_noise.detach().requires_grad_(True)
    got = cumulative_module.train_cumulative_uap(cnn_metric, batches, size=64, epochs=2)
    assert (got - 1e-4).abs().min() > 0  # every pixel moved (the raw gradient of a 64x64 mean is ~1e-7)
    torch.testing.assert_close(got, universal_noise.detach()[0], atol=0, rtol=0)


# == generative-uap (MRB robustness_benchmark/methods/generative-uap/train.py) ===========================
def big(images):
    """The generators need sides that are multiples of 256."""
    return F.interpolate(images, size=(256, 256), mode="bilinear", align_corners=False).clamp(0, 1)


def test_generative_uap_training_matches_the_reference_loop(cnn_metric, small_images):
    images = big(small_images[:3])
    batches = [images[:2], images[2:]]
    eps = 10.0 / 255.0
    universal_noise = torch.rand((1, 3, 256, 256), generator=torch.Generator().manual_seed(5))
    universal_noise.requires_grad_(True)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        netG = UnetGenerator(3, 3, 4, norm_type="instance", act_type="relu")
        optimizer = torch.optim.Adam(netG.parameters(), lr=0.001)
        for _ in range(2):
            for y in batches:
                delta_im = netG(universal_noise) * 10.0 / 255.0
                res = y + delta_im
                res.data.clamp_(min=0.0, max=1.0)
                a = 1 - cnn_metric(res).mean() / cnn_metric.span
                optimizer.zero_grad()
                a.backward()
                optimizer.step()
                universal_noise.data.clamp_(min=-eps, max=eps)
        expected = (netG(universal_noise) * 10.0 / 255.0).squeeze().data
    got = generative_module.train_generative_uap(cnn_metric, batches, epochs=2, seed=5, ngf=4)
    assert got.abs().max() > 1e-3 and got.abs().max() <= eps
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


# == cnn-attack / FACPA (ADI metrics/methods/cnn-attack/train.py, utils/cnn_evaluate.py) =================
def test_unet_has_the_reference_key_layout():
    """The reference's UnetGenerator(3, 3, 64, 'instance', 'relu'): conv1..8 (4x4, stride 2) and
    dconv1..8 with the skip concatenations' input widths; instance norms have no parameters."""
    state = UnetGenerator(3, 3, 64).state_dict()
    convs = [(3, 64), (64, 128), (128, 256), (256, 512)] + [(512, 512)] * 4
    dconvs = [(512, 512), (1024, 512), (1024, 512), (1024, 512), (1024, 256), (512, 128), (256, 64), (128, 3)]
    expected = {}
    for i, (cin, cout) in enumerate(convs, 1):
        expected[f"conv{i}.weight"], expected[f"conv{i}.bias"] = (cout, cin, 4, 4), (cout,)
    for i, (cin, cout) in enumerate(dconvs, 1):
        expected[f"dconv{i}.weight"], expected[f"dconv{i}.bias"] = (cin, cout, 4, 4), (cout,)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def reference_cnn_train(metric_model, batches, ngf, lr=0.001, n_epoch=2):
    netG = UnetGenerator(3, 3, ngf, norm_type="instance", act_type="relu")
    optimizer = torch.optim.Adam(netG.parameters(), lr=lr)
    for _ in range(n_epoch):
        for y in batches:
            delta_im = netG(y) * 10.0 / 255.0
            res = y + delta_im
            res.data.clamp_(min=0.0, max=1.0)
            a = 1 - metric_model(res).mean() / metric_model.span
            optimizer.zero_grad()
            a.backward()
            for p in netG.parameters():
                p.grad = torch.nan_to_num(p.grad)
            optimizer.step()
    return netG.state_dict()


def reference_cnn_run(netG, orig_images, k):
    """cnn_evaluate.run for one image: numpy HxWx3, crop to multiples of 256, tile, ``+ delta * k * 10``."""
    h, w = orig_images[0].shape[:2]
    h, w = (h // 256) * 256, (w // 256) * 256
    timage = torch.from_numpy(orig_images[:, :h, :w, :]).permute(0, 3, 1, 2).float()
    delta_im = (netG(timage) * 10.0 / 255.0).data.cpu().numpy().transpose(0, 2, 3, 1)
    delta = np.tile(delta_im, (1, orig_images.shape[1] // h + 1, orig_images.shape[2] // w + 1, 1))[
        :, : orig_images.shape[1], : orig_images.shape[2], :
    ]
    return np.clip(orig_images + delta * k * 10, 0, 1)


def test_cnn_attack_matches_the_reference_training_and_run(cnn_metric, small_images):
    images = big(small_images[:3])
    batches = [images[:2], images[2:]]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected_state = reference_cnn_train(cnn_metric, batches, ngf=4)
    got_state = cnn_module.train_facpa(cnn_metric, batches, epochs=2, seed=3, ngf=4)
    assert got_state.keys() == expected_state.keys()
    for key in got_state:
        torch.testing.assert_close(got_state[key], expected_state[key], atol=0, rtol=0)

    # Run: a 300x520 image (crop 256x512, tiled), float64 numpy in the reference.
    net = UnetGenerator(3, 3, 4)
    net.load_state_dict(got_state)
    net.eval()
    image = F.interpolate(small_images[:1], size=(300, 520), mode="bilinear", align_corners=False).clamp(0, 1)
    expected = reference_cnn_run(net, image.permute(0, 2, 3, 1).double().numpy(), 0.5)
    got = image + cnn_module.facpa_perturbation(net, image) * 0.5 * 10
    got = got.clamp(0, 1)
    expected = torch.from_numpy(expected).permute(0, 3, 1, 2)
    assert (expected - image.double()).abs().max() > 0.05
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)  # float32 vs float64 arithmetic


def test_cnn_attack_pads_images_smaller_than_the_tile(cnn_metric, small_images):
    net = UnetGenerator(3, 3, 4).eval()
    delta = cnn_module.facpa_perturbation(net, small_images[:2])
    padded = F.pad(small_images[:2], (0, 192, 0, 192))
    with torch.no_grad():
        expected = net(padded)[..., :64, :64] * 10 / 255
    torch.testing.assert_close(delta, expected, atol=1e-7, rtol=0)


# == cadv (ADI metrics/methods/cadv/run.py) ==============================================================
def test_colorization_net_has_the_reference_key_layout():
    state = cadv_module.ColorizationNet().state_dict()
    assert len(state) == 107  # 36 convolutions (weight, bias) + 7 batch norms (5 entries each)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key, shape in {
        "model1.0.weight": (64, 4, 3, 3),
        "model1.4.running_var": (64,),
        "model3.6.weight": (256,),
        "model4.6.num_batches_tracked": (),
        "model5.4.weight": (512, 512, 3, 3),
        "model7.6.bias": (512,),
        "model8up.0.weight": (512, 256, 4, 4),
        "model3short8.0.weight": (256, 256, 3, 3),
        "model8.1.weight": (256, 256, 3, 3),
        "model8.5.running_mean": (256,),
        "model9up.0.weight": (256, 128, 4, 4),
        "model2short9.0.weight": (128, 128, 3, 3),
        "model9.1.weight": (128, 128, 3, 3),
        "model9.3.weight": (128,),
        "model10up.0.weight": (128, 128, 4, 4),
        "model1short10.0.weight": (128, 64, 3, 3),
        "model10.1.weight": (128, 128, 3, 3),
        "model_class.0.weight": (529, 256, 1, 1),
        "model_out.0.weight": (2, 128, 1, 1),
    }.items():
        assert shapes[key] == shape, key


@pytest.fixture(scope="module")
def colorization_weights(tmp_path_factory):
    """Random weights in the official key layout (the real file cannot be downloaded here)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = cadv_module.ColorizationNet().state_dict()
    path = tmp_path_factory.mktemp("cadv") / "cadv-colorization-model.pth"
    torch.save(state, path)
    return path


def ref_rgb2lab(rgb):
    mask = (rgb > 0.04045).type(torch.FloatTensor)
    rgb = (((rgb + 0.055) / 1.055) ** 2.4) * mask + rgb / 12.92 * (1 - mask)
    x = 0.412453 * rgb[:, 0, :, :] + 0.357580 * rgb[:, 1, :, :] + 0.180423 * rgb[:, 2, :, :]
    y = 0.212671 * rgb[:, 0, :, :] + 0.715160 * rgb[:, 1, :, :] + 0.072169 * rgb[:, 2, :, :]
    z = 0.019334 * rgb[:, 0, :, :] + 0.119193 * rgb[:, 1, :, :] + 0.950227 * rgb[:, 2, :, :]
    xyz = torch.cat((x[:, None, :, :], y[:, None, :, :], z[:, None, :, :]), dim=1)
    xyz_scale = xyz / torch.Tensor((0.95047, 1.0, 1.08883))[None, :, None, None]
    mask = (xyz_scale > 0.008856).type(torch.FloatTensor)
    xyz_int = xyz_scale ** (1 / 3.0) * mask + (7.787 * xyz_scale + 16.0 / 116.0) * (1 - mask)
    L = 116.0 * xyz_int[:, 1, :, :] - 16.0
    a = 500.0 * (xyz_int[:, 0, :, :] - xyz_int[:, 1, :, :])
    b = 200.0 * (xyz_int[:, 1, :, :] - xyz_int[:, 2, :, :])
    lab = torch.cat((L[:, None, :, :], a[:, None, :, :], b[:, None, :, :]), dim=1)
    return torch.cat(((lab[:, [0], :, :] - 50.0) / 100.0, lab[:, 1:, :, :] / 110.0), dim=1)


def ref_lab2rgb(lab_rs):
    lab = torch.cat((lab_rs[:, [0], :, :] * 100.0 + 50.0, lab_rs[:, 1:, :, :] * 110.0), dim=1)
    y_int = (lab[:, 0, :, :] + 16.0) / 116.0
    x_int = (lab[:, 1, :, :] / 500.0) + y_int
    z_int = torch.max(torch.Tensor((0,)), y_int - (lab[:, 2, :, :] / 200.0))
    out = torch.cat((x_int[:, None, :, :], y_int[:, None, :, :], z_int[:, None, :, :]), dim=1)
    mask = (out > 0.2068966).type(torch.FloatTensor)
    out = (out**3.0) * mask + (out - 16.0 / 116.0) / 7.787 * (1 - mask)
    xyz = out * torch.Tensor((0.95047, 1.0, 1.08883))[None, :, None, None]
    r = 3.24048134 * xyz[:, 0, :, :] - 1.53715152 * xyz[:, 1, :, :] - 0.49853633 * xyz[:, 2, :, :]
    g = -0.96925495 * xyz[:, 0, :, :] + 1.87599 * xyz[:, 1, :, :] + 0.04155593 * xyz[:, 2, :, :]
    b = 0.05564664 * xyz[:, 0, :, :] - 0.20404134 * xyz[:, 1, :, :] + 1.05731107 * xyz[:, 2, :, :]
    rgb = torch.cat((r[:, None, :, :], g[:, None, :, :], b[:, None, :, :]), dim=1)
    rgb = torch.max(rgb, torch.zeros_like(rgb))
    mask = (rgb > 0.0031308).type(torch.FloatTensor)
    return (1.055 * (rgb ** (1.0 / 2.4)) - 0.055) * mask + 12.92 * rgb * (1 - mask)


def reference_cadv(compress_image, model, color_model, rng, lr=0.0005):
    """run.py's get_colorization_data + attack; KMeans and np.random replaced by kmeans2 and ``rng``."""
    old_compress_image = compress_image.clone()
    w, h = (compress_image.shape[2] // 4) * 4, (compress_image.shape[3] // 4) * 4
    compress_image = compress_image[:, :, :w, :h]
    data_lab = ref_rgb2lab(compress_image)
    data = {
        "L": data_lab[
            :,
            [
                0,
            ],
            :,
            :,
        ],
        "AB": data_lab[:, 1:, :, :],
    }
    hints = data["AB"].clone()
    mask = torch.full_like(data["L"], -0.5)
    with torch.no_grad():
        N, C = hints.shape[:2]
        np_hints = ndimage.gaussian_filter(hints.squeeze(0).cpu().numpy(), 3).reshape([2, -1]).T
        hints_q = kmeans2(np_hints.astype(np.float64), 8, minit="++", seed=int(rng.integers(2**31 - 1)))[1]
        logits, _reg = color_model(data["L"], torch.zeros_like(hints), torch.full_like(mask, -0.5))
        hints_distr = F.softmax(logits, dim=1).clamp(1e-8).squeeze(0)
        entropy = (-1 * hints_distr * torch.log(hints_distr)).sum(0)
        entropy = F.interpolate(entropy[None, None, ...], scale_factor=4, mode="nearest").squeeze().view(-1)
        entropy_cluster = np.zeros(8)
        for i in range(8):
            entropy_cluster[i] = entropy[(hints_q == i).nonzero()].mean()
        idx = np.isin(hints_q, np.argsort(entropy_cluster)[:4]).nonzero()[0]
        idx_rand = idx[rng.choice(idx.shape[0], 50, replace=False)]
        chosen_hints = hints.view(N, C, -1)[..., idx_rand].clone()
        hints.fill_(0)
        hints.view(N, C, -1)[..., idx_rand] = chosen_hints
        mask.view(N, 1, -1)[..., idx_rand] = 0.5
    data["hints"], data["mask"] = hints, mask
    optimizer = torch.optim.Adam(
        [data["hints"].requires_grad_(), data["mask"].requires_grad_()], lr=lr, betas=(0.9, 0.999)
    )
    for _ in range(10):
        _out_class, out_reg = color_model(data["L"], data["hints"].clamp(-1, 1), data["mask"].clamp(-0.5, 0.5))
        compress_image = ref_lab2rgb(torch.cat((data["L"], out_reg), dim=1)).clamp(0, 1)
        score = model(compress_image)
        sign = 1 if model.higher_is_better else -1
        loss = 1 - score * sign / model.span
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        compress_image.data.clamp_(min=0, max=1)
    old_compress_image[:, :, :w, :h] = compress_image
    return old_compress_image.data.clamp_(min=0, max=1)


def test_cadv_matches_the_reference_loop(registry, cnn_metric, small_images, colorization_weights):
    images = small_images[1:2, :, :34, :43]  # cropped to 32x40 inside; the rest is kept (one image: 1M-weight layers)
    attack = registry.get("attacks", "cadv")(weights_path=str(colorization_weights))
    got = attack.run(cnn_metric, images, seed=7)
    rng = np.random.default_rng(7)
    expected = per_image(reference_cadv, images, cnn_metric, attack.network, rng)
    assert (got[..., :32, :40] - images[..., :32, :40]).abs().max() > 0.01
    torch.testing.assert_close(got[..., 32:, :], images[..., 32:, :], atol=0, rtol=0)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.slow
def test_cadv_keeps_the_lightness_and_raises_tiny_iqa(registry, tiny_iqa, bundled_images, colorization_weights):
    """With random colourisation weights the recolouring itself is arbitrary (it scores below the clean
    image); what the attack controls is the hints: the optimised result must score above the
    recolouring with the initial hints (one forward pass, same seed, so the same hints)."""
    images = bundled_images[:2]
    attack = registry.get("attacks", "cadv")(weights_path=str(colorization_weights), lr=0.05)
    adv = attack.run(tiny_iqa, images, seed=0)
    start = registry.get("attacks", "cadv")(weights_path=str(colorization_weights), iters=1).run(
        tiny_iqa, images, seed=0
    )
    assert_bound(attack, images, adv)
    lightness = cadv_module.rgb_to_lab_scaled(images)[:, 0]
    recoloured = cadv_module.rgb_to_lab_scaled(adv)[:, 0]
    assert (adv - start).abs().max() > 0.005
    assert (lightness - recoloured).abs().mean() < 0.02  # L is the input's (up to gamut clipping)
    gain = mean_gain(tiny_iqa, start, adv)
    print(f"tiny-iqa mean score gain of cadv over its initial recolouring (random weights): {gain:+.4f}")
    assert gain > 0


def test_cadv_needs_its_weights(registry, cnn_metric, small_images, tmp_path, torch_home):
    from iqadef import WeightsError

    with pytest.raises((WeightsError, ConfigError), match="cadv-colorization-model.pth"):
        registry.get("attacks", "cadv")().run(cnn_metric, small_images)
    torch.save({"model1.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        registry.get("attacks", "cadv")(weights_path=str(tmp_path / "bad.pth")).run(cnn_metric, small_images)


# == the trained attacks: cache, reuse, retraining, resumption ============================================
#: name -> (module, training function, small settings, a changed setting)
TRAINED = {
    "cumulative-uap": (
        cumulative_module,
        "train_cumulative_uap",
        {"size": 64, "epochs": 2, "batch_size": 1, "amplitude": 0.8},
        {"lr": 2.0},
    ),
    "generative-uap": (
        generative_module,
        "train_generative_uap",
        {"ngf": 4, "epochs": 2, "batch_size": 1, "amplitude": 0.8},
        {"ngf": 8},
    ),
    "cnn-attack": (
        cnn_module,
        "train_facpa",
        {"ngf": 4, "epochs": 2, "batch_size": 1, "amplitude": 0.5},
        {"epochs": 3},
    ),
}


def no_training(*args, **kwargs):
    raise AssertionError("the cached training should have been used")


@pytest.mark.parametrize("name", list(TRAINED))
def test_training_is_cached_reused_and_redone_when_a_parameter_changes(
    registry, name, cnn_metric, small_images, tmp_path, torch_home, monkeypatch
):
    module, function, small, changed = TRAINED[name]
    write_pngs(small_images[:2], tmp_path / "train")
    make = registry.get("attacks", name)
    attack = make(train_dir=str(tmp_path / "train"), **small)
    out = attack.run(cnn_metric, small_images)
    assert_bound(attack, small_images, out)
    assert (out - small_images).abs().max() > 0
    cached = list((torch_home / "hub" / "iqadef" / name).iterdir())
    assert len(cached) == 1 and cached[0].name.startswith(cnn_metric.name) and cached[0].suffix == ".pt"
    assert ".partial" not in cached[0].name

    monkeypatch.setattr(module, function, no_training)
    again = make(train_dir=str(tmp_path / "train"), **small).run(cnn_metric, small_images)
    assert torch.equal(out, again)
    with pytest.raises(AssertionError, match="cached"):
        make(train_dir=str(tmp_path / "train"), **{**small, **changed}).run(cnn_metric, small_images)
    (tmp_path / "train" / "img1.png").unlink()  # other training images: another entry
    with pytest.raises(AssertionError, match="cached"):
        make(train_dir=str(tmp_path / "train"), **small).run(cnn_metric, small_images)


@pytest.mark.parametrize("name", list(TRAINED))
def test_a_killed_training_resumes_from_its_last_epoch(registry, name, cnn_metric, small_images, tmp_path, monkeypatch):
    module, function, small, _ = TRAINED[name]
    write_pngs(small_images[:2], tmp_path / "train")
    make = registry.get("attacks", name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "uninterrupted"))
    expected = make(train_dir=str(tmp_path / "train"), **small).run(cnn_metric, small_images)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "interrupted"))
    real = getattr(module, function)
    epochs_run = []

    def killed_after_one_epoch(*args, checkpoint=None, **kwargs):
        def save_then_die(state):
            checkpoint(state)
            raise KeyboardInterrupt

        return real(*args, checkpoint=save_then_die, **kwargs)

    monkeypatch.setattr(module, function, killed_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        make(train_dir=str(tmp_path / "train"), **small).run(cnn_metric, small_images)
    folder = tmp_path / "interrupted" / "hub" / "iqadef" / name
    assert [p.name.endswith(".partial.pt") for p in folder.iterdir()] == [True]

    def resumed(*args, resume=None, checkpoint=None, **kwargs):
        def record(state):
            epochs_run.append(int(state["epoch"]))
            checkpoint(state)

        return real(*args, resume=resume, checkpoint=record, **kwargs)

    monkeypatch.setattr(module, function, resumed)
    got = make(train_dir=str(tmp_path / "train"), **small).run(cnn_metric, small_images)
    assert epochs_run == [2]  # only the second epoch was trained again
    assert torch.equal(got, expected)
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial.pt")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, params",
    [
        ("cumulative-uap", {"epochs": 3, "batch_size": 4, "amplitude": 0.9}),
        ("generative-uap", {"ngf": 8, "epochs": 3, "lr": 0.01, "batch_size": 4, "amplitude": 0.9}),
        ("cnn-attack", {"ngf": 8, "epochs": 3, "lr": 0.01, "batch_size": 4, "amplitude": 0.5}),
    ],
)
def test_trained_attack_raises_tiny_iqa_within_its_bound(registry, tiny_iqa, name, params, torch_home):
    """Trained on the bundled images (the default training set, 256x256) and applied to four of them;
    small generators (ngf 8) and few epochs so that training takes seconds."""
    from .conftest import _load_png, bundled_pngs

    images = torch.cat([_load_png(p, 256) for p in bundled_pngs()[:4]])
    attack = registry.get("attacks", name)(**params)
    adv = attack.run(tiny_iqa, images)
    assert_bound(attack, images, adv)
    gain = mean_gain(tiny_iqa, images, adv)
    print(f"tiny-iqa mean score gain of {name}: {gain:+.4f}")
    assert gain > 0


@pytest.mark.parametrize("name", ["uap", *TRAINED])
def test_cached_results_follow_the_training_images(registry, name, small_images, tmp_path):
    """The attack's key (which keys every cached x_a) changes with the training images' content."""
    write_pngs(small_images[:2], tmp_path / "train")
    make = registry.get("attacks", name)
    before = make(train_dir=str(tmp_path / "train")).key()
    assert make(train_dir=str(tmp_path / "train")).key() == before
    write_pngs(small_images[2:], tmp_path / "train")  # same names, other content
    assert make(train_dir=str(tmp_path / "train")).key() != before


def test_training_on_a_named_dataset(registry, cnn_metric, small_images, tmp_path, torch_home):
    """`train_dataset` takes a dataset as the registry's `dataset:` does; `builtin` is the default set."""
    make = registry.get("attacks", "cumulative-uap")
    small = TRAINED["cumulative-uap"][2]
    by_name = make(train_dataset="builtin", **small)
    default = make(**small)
    assert by_name.cache_path(cnn_metric) == default.cache_path(cnn_metric)
    assert by_name.weights_in_use() == default.weights_in_use() and len(default.weights_in_use()) >= 4
    write_pngs(small_images[:2], tmp_path / "mine")
    folder = make(train_dataset=str(tmp_path / "mine"), **small)
    assert [p.name for p in folder.weights_in_use()] == ["img0.png", "img1.png"]
    assert torch.equal(
        folder.run(cnn_metric, small_images),
        make(train_dir=str(tmp_path / "mine"), **small).run(cnn_metric, small_images),
    )
    with pytest.raises(ConfigError, match="train_dataset"):
        make(train_dataset="no-such-dataset", **small).run(cnn_metric, small_images)
