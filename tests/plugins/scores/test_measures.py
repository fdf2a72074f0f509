"""Image measures on hand-made images with known values."""

import math

import numpy as np
import pytest
import torch

from iqadef.plugins.scores import _measures as m
from iqadef.plugins.scores.full_reference import FullReferenceMeasures

from .conftest import make_cells


def const(value, size=16, batch=1):
    return torch.full((batch, 3, size, size), float(value))


def test_psnr_of_known_mse():
    a, b = const(0.0), const(0.1)
    assert m.mse(a, b).item() == pytest.approx(0.01)
    assert m.psnr(a, b).item() == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert m.mae(a, b).item() == pytest.approx(0.1)
    assert m.linf(a, b).item() == pytest.approx(0.1)


def test_psnr_is_scikit_images_including_inf_for_identical_images():
    """The reference calls skimage's peak_signal_noise_ratio(data_range=1): +inf for identical images."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 3, 8, 8, generator=g)
    b = torch.stack([a[0], (a[1] + 0.01 * torch.randn(3, 8, 8, generator=g)).clamp(0, 1), a[2]])
    b[2, 0, 0, 0] = 1.0 - a[2, 0, 0, 0]  # one pixel apart: far above any cap, still finite
    out = m.psnr(a, b)
    expected = []
    for i in range(3):
        with np.errstate(divide="ignore"):
            expected.append(
                skimage_metrics.peak_signal_noise_ratio(
                    a[i].numpy().astype(np.float64), b[i].numpy().astype(np.float64), data_range=1
                )
            )
    assert math.isinf(out[0]) and math.isinf(expected[0]) and out[0] > 0
    assert out[1:].tolist() == pytest.approx(expected[1:], rel=1e-9)


def test_defended_image_larger_than_x_is_resized_without_antialiasing():
    """torchvision 0.15's Resize on tensors (the reference's defence_evaluate.py) did not antialias."""
    x = torch.rand(1, 3, 10, 12)
    big = torch.rand(1, 3, 40, 48)
    expected = torch.nn.functional.interpolate(big, size=(10, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m.match_size(big, x), expected)


def test_linf_takes_the_largest_pixel_difference():
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[0, 1, 3, 4] = 0.25
    b[0, 2, 0, 0] = -0.5
    assert m.linf(a, b).item() == pytest.approx(0.5)
    assert m.mae(a, b).item() == pytest.approx(0.75 / (3 * 64))


def test_ssim_of_constant_images_by_hand():
    # variances are 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = 0.01^2
    # (SSIM is computed in float32 for speed: agreement to 2e-5)
    assert m.ssim(const(0.2), const(0.4)).item() == pytest.approx(0.1601 / 0.2001, abs=2e-5)  # 0.80009995
    assert m.ssim(const(0.2), const(0.3)).item() == pytest.approx(0.9231360491929286, abs=2e-5)
    assert m.ssim(const(0.5), const(0.5)).item() == pytest.approx(1.0, abs=2e-5)


def test_ssim_matches_scikit_image_defaults():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 20, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 24, 20, generator=g)).clamp(0, 1)
    ours = m.ssim(a, b)
    for i in range(2):
        ref = skimage_metrics.structural_similarity(
            a[i].permute(1, 2, 0).numpy().astype(np.float64),
            b[i].permute(1, 2, 0).numpy().astype(np.float64),
            channel_axis=2,
            data_range=1,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
        ref_psnr = skimage_metrics.peak_signal_noise_ratio(
            a[i].numpy().astype(np.float64), b[i].numpy().astype(np.float64), data_range=1
        )
        assert m.psnr(a[i : i + 1], b[i : i + 1]).item() == pytest.approx(ref_psnr, rel=1e-6)


def test_ssim_of_tiny_images_uses_a_smaller_window():
    out = m.ssim(torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5))
    assert torch.isfinite(out).all()


def test_match_size_resizes_bilinearly_to_the_reference():
    small = const(0.3, size=8)
    big = const(0.0, size=32)
    out = m.match_size(small, big)
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)
    assert m.match_size(big, big) is big


EXPECTED_COLUMNS = [
    f"{meas}_{pair}"
    for pair in ("x_xa", "x_dx", "x_dxa", "xa_dxa", "dx_dxa")
    for meas in ("psnr", "ssim", "mse", "mae", "linf")
]


def test_full_reference_columns_and_values_with_a_size_changing_defence(metric):
    x = const(0.2, size=32, batch=2)
    xa = const(0.3, size=32, batch=2)
    dx = const(0.2, size=16, batch=2)  # a resize defence: half size
    dxa = const(0.25, size=16, batch=2)
    cells = make_cells(x, xa, dx, dxa, [1, 1], [1, 1], [1, 1], [1, 1], metric)
    out = FullReferenceMeasures().compute(cells)
    assert sorted(out) == sorted(EXPECTED_COLUMNS) == sorted(FullReferenceMeasures.column_names())
    assert all(v.shape == (2,) for v in out.values())
    assert out["psnr_x_xa"].tolist() == pytest.approx([20.0, 20.0])  # MSE 0.01
    assert out["psnr_x_dx"].tolist() == [math.inf, math.inf]  # identical after resize
    assert out["mse_x_dxa"].tolist() == pytest.approx([0.0025, 0.0025])  # 0.05^2
    assert out["mae_xa_dxa"].tolist() == pytest.approx([0.05, 0.05])
    assert out["linf_dx_dxa"].tolist() == pytest.approx([0.05, 0.05])
    assert out["psnr_dx_dxa"][0].item() == pytest.approx(10 * math.log10(1 / 0.0025))


def test_diff_measures_equal_the_float64_ones():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(3, 3, 20, 17, generator=g)
    b = (a + 0.05 * torch.randn(3, 3, 20, 17, generator=g)).clamp(0, 1)
    b[1] = a[1]
    out = m.diff_measures(a, b)
    torch.testing.assert_close(out["mse"], m.mse(a, b), rtol=1e-9, atol=0)
    torch.testing.assert_close(out["mae"], m.mae(a, b), rtol=1e-9, atol=0)
    torch.testing.assert_close(out["linf"], m.linf(a, b), rtol=1e-7, atol=0)
    assert out["mse"][1] == 0 and math.isinf(m.psnr_from_mse(out["mse"])[1])


def _unit(metric, sizes=((32, 32), (16, 16), (32, 32), (40, 40)), batch=2, seed=0):
    """Cell batches of one unit: the same x and x_a, one defence per size (resizing ones among them)."""
    from iqadef.core.cells import CellBatch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    xa = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    memo: dict = {}
    members = []
    for h, w in sizes:
        dx = torch.rand(batch, 3, h, w, generator=g)
        dxa = (dx + 0.02 * torch.randn(dx.shape, generator=g)).clamp(0, 1)
        f = torch.zeros(batch)
        members.append(CellBatch(x, xa, dx, dxa, f, f, f, f, metric, memo))
    return members


def test_full_reference_of_a_group_equals_each_defence_alone_and_measures_shared_pairs_once(metric, monkeypatch):
    from iqadef.core.cells import CellGroup
    from iqadef.plugins.scores.quality import QualityScore

    alone = [FullReferenceMeasures().compute(c) | QualityScore().compute(c) for c in _unit(metric)]
    calls = []
    real_ssim, real_pairs = m.ssim, m.pair_measures
    monkeypatch.setattr(m, "ssim", lambda a, b: calls.append(a.shape) or real_ssim(a, b))
    monkeypatch.setattr(m, "pair_measures", lambda pairs: calls.extend(a.shape for a, _ in pairs) or real_pairs(pairs))
    members = _unit(metric)
    CellGroup(members)
    grouped = [FullReferenceMeasures().compute(c) | QualityScore().compute(c) for c in members]
    # 4 defences x 4 pairs of their own + x vs x_a once; quality finds its SSIMs in the memo
    assert len(calls) == 4 * 4 + 1
    for one, together in zip(alone, grouped):
        assert sorted(one) == sorted(together)
        for name in one:
            torch.testing.assert_close(together[name], one[name], rtol=1e-12, atol=0, msg=name)
    assert all(not c.changed_measures() for c in members)


def test_a_group_whose_batched_call_fails_computes_each_batch_alone(metric):
    from iqadef.core.cells import CellGroup

    members = _unit(metric, sizes=((32, 32), (16, 16)))
    CellGroup(members)
    seen = []

    def compute(batches):
        seen.append(len(batches))
        if len(batches) > 1:
            raise RuntimeError("batched path broken")
        return [batches[0].def_adv.shape[-1]]

    assert [c.batched("probe", compute) for c in members] == [32, 16]
    assert seen == [2, 1, 1]


def test_an_in_place_change_of_a_group_result_is_reported(metric):
    from iqadef.core.cells import CellGroup

    members = _unit(metric, sizes=((32, 32), (32, 32)))
    CellGroup(members)
    values = members[0].batched("probe", lambda batches: [torch.zeros(2) for _ in batches])
    assert members[1].changed_measures() == []
    values += 1
    assert "probe" in members[1].changed_measures()


def _builtin_batch(count: int = 4) -> torch.Tensor:
    from PIL import Image

    from iqadef.core.dataset import builtin_images_dir

    files = sorted(builtin_images_dir().glob("*.png"))[:count]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((64, 48)), dtype=np.float32) / 255 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_ssim_pairs_with_shared_moments_equal_ssim_on_real_images():
    """The grid's SSIM (moments per image, shared between pairs) against the per-pair SSIM: float32 noise."""
    g = torch.Generator().manual_seed(0)
    x = _builtin_batch()
    xa = (x + (8 / 255) * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(xa, 3, stride=1, padding=1, count_include_pad=False)
    dx = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    small = x[..., 5:12, 3:9]  # under the 7x7 window in one side: a smaller window
    pairs = [(x, xa), (x, blurred), (xa, blurred), (dx, blurred), (x, dx), (xa, xa), (small, small.flip(-1))]
    shared = m.ssim_pairs(pairs)
    for (a, b), value in zip(pairs, shared):
        assert value.dtype == torch.float64 and value.shape == (x.shape[0],)
        assert torch.allclose(value, m.ssim(a, b), rtol=0, atol=2e-6)
    assert torch.allclose(shared[5], torch.ones(x.shape[0], dtype=torch.float64), rtol=0, atol=1e-6)


def test_stored_columns_of_a_unit_equal_the_whole_batch_formulas(metric):
    """The grid's columns (SSIM and the differences image by image, pairs shared) against the formulas on
    whole batches, pair by pair: SSIM to float32 noise of the per-pair :func:`ssim`, MSE/MAE to float64
    rounding of :func:`diff_measures` (and, a float32 difference, to 1e-7 of the float64 :func:`mse`), L-inf
    exactly."""
    from iqadef.core.cells import CellBatch, CellGroup
    from iqadef.plugins.scores.perturbation import PerturbationL2
    from iqadef.plugins.scores.quality import QualityScore

    g = torch.Generator().manual_seed(1)
    x = _builtin_batch()
    xa = ((x + (8 / 255) * torch.randn(x.shape, generator=g).sign()).clamp(0, 1) * 255).round() / 255
    defences = [
        lambda t: t,
        lambda t: t.flip(-1),
        lambda t: torch.nn.functional.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False),
        lambda t: torch.nn.functional.interpolate(t, size=(24, 32), mode="bilinear"),  # resizes: compared resized back
    ]
    memo: dict = {}
    f = torch.zeros(x.shape[0])
    members = [CellBatch(x, xa, d(x), d(xa), f, f, f, f, metric, memo) for d in defences]
    CellGroup(members)
    for cells in members:
        got = FullReferenceMeasures().compute(cells) | QualityScore().compute(cells) | PerturbationL2().compute(cells)
        for pair, (a, b) in m.pair_images(cells).items():
            batch = m.diff_measures(a, b)
            torch.testing.assert_close(got[f"ssim_{pair}"], m.ssim(a, b), rtol=0, atol=2e-6)
            torch.testing.assert_close(got[f"mse_{pair}"], batch["mse"], rtol=1e-12, atol=0)
            torch.testing.assert_close(got[f"mse_{pair}"], m.mse(a, b), rtol=1e-7, atol=0)  # float32 difference
            torch.testing.assert_close(got[f"mae_{pair}"], batch["mae"], rtol=1e-12, atol=0)
            assert torch.equal(got[f"linf_{pair}"], batch["linf"])
            torch.testing.assert_close(got[f"psnr_{pair}"], m.psnr_from_mse(batch["mse"]), rtol=1e-12, atol=0)
        ssim_adv, ssim_clean = got["ssim_x_dxa"], got["ssim_x_dx"]
        torch.testing.assert_close(got["similarity_score"], ssim_adv + got["psnr_x_dxa"] / 40, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            got["similarity_score_clean"], ssim_clean + got["psnr_x_dx"] / 40, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(got["l2_x_xa"], (got["mse_x_xa"] * x[0].numel()).sqrt(), rtol=1e-12, atol=0)
