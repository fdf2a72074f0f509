"""Per-image full-reference measures shared by the score plugins (not a plugin itself).

Conventions follow the reference code (scikit-image on float images in [0, 1]):
PSNR with data range 1 (+inf for identical images, as ``skimage.metrics.peak_signal_noise_ratio``), SSIM
with scikit-image's defaults (7×7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the
valid region and over the RGB channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The PSNR wianluna/adversarial_purification ``test.py`` uses when the attacked image equals the clean one.
STUDY_IDENTICAL_PSNR_DB = 150.0

#: The image pairs measured, as column suffixes: clean x, attacked x_a, D(x), D(x_a).
PAIRS = ("x_xa", "x_dx", "x_dxa", "xa_dxa", "dx_dxa")


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.detach().to(torch.float64).flatten(1)


def match_size(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``images`` resized to ``reference``'s height and width (bilinear, not antialiased), if they differ.

    This is what the reference does before comparing a defended image with an undefended one:
    ``torchvision.transforms.Resize`` to the clean image's size (defence_evaluate.py), which in its
    torchvision 0.15 did not antialias tensors (it matters only when the defended image is the larger).
    """
    if images.shape[-2:] == reference.shape[-2:]:
        return images
    return F.interpolate(
        images.detach().float(), size=tuple(reference.shape[-2:]), mode="bilinear", align_corners=False
    ).clamp(0.0, 1.0)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``[B]``."""
    return (_flat(a) - _flat(b)).pow(2).mean(dim=1)


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, ``[B]``."""
    return (_flat(a) - _flat(b)).abs().mean(dim=1)


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest absolute pixel difference per image, ``[B]``."""
    return (_flat(a) - _flat(b)).abs().amax(dim=1)


def psnr_from_mse(err: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / MSE)`` (data range 1); +inf where MSE is 0, as scikit-image gives (the aggregation
    leaves such values out of means and counts them, see :func:`iqadef.analysis.scores.aggregate`)."""
    return 10.0 * torch.log10(1.0 / err)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB, data range 1; +inf for identical images."""
    return psnr_from_mse(mse(a, b))


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM per image as ``skimage.metrics.structural_similarity(..., channel_axis=2, data_range=1)``.

    Uniform ``win_size`` window, sample covariance (``N / (N - 1)``), mean over the window positions
    that fit inside the image, then over channels. Images smaller than the window use the largest odd
    window that fits (scikit-image would refuse them).
    """
    x = a.detach()
    if x.dim() != 4 or x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"SSIM needs images [B,C,H,W] of at least 1x1 pixels, got {tuple(x.shape)}")
    # It runs for every grid cell. A chunk of images small enough to stay in cache at a time (on CPU,
    # one 256x256 RGB image: ~5x faster than the whole batch through two depthwise convolutions).
    per_image = x[0].numel()
    chunk = x.shape[0] if x.is_cuda else max(1, SSIM_CHUNK_ELEMENTS // max(1, per_image))
    if chunk >= x.shape[0]:
        return _ssim(x, b.detach(), win_size, k1, k2)
    return torch.cat(
        [_ssim(x[i : i + chunk], b[i : i + chunk].detach(), win_size, k1, k2) for i in range(0, x.shape[0], chunk)]
    )


#: Pixels x channels per SSIM chunk on CPU (the five moments of a chunk then take ~4 MB).
SSIM_CHUNK_ELEMENTS = 2**18


def _ssim(a: torch.Tensor, b: torch.Tensor, win_size: int, k1: float, k2: float) -> torch.Tensor:
    # float32, with both images shifted by a common per-channel constant first: that leaves (co)variances
    # unchanged and keeps E[x^2] - E[x]^2 free of float32 cancellation (scikit-image to ~1e-8). The box
    # filter is two strided window sums (unfold) over the five moments at once; the rest works in place.
    x = a.float()
    y = b.float()
    shift = 0.5 * (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True))
    win = min(win_size, x.shape[-1], x.shape[-2])
    if win % 2 == 0:
        win -= 1
    n = win * win
    cov_norm = n / (n - 1) if n > 1 else 1.0
    moments = torch.empty((x.shape[0], 5, *x.shape[1:]), dtype=x.dtype, device=x.device)
    xs, ys = torch.sub(x, shift, out=moments[:, 0]), torch.sub(y, shift, out=moments[:, 1])
    torch.mul(xs, xs, out=moments[:, 2])
    torch.mul(ys, ys, out=moments[:, 3])
    torch.mul(xs, ys, out=moments[:, 4])
    means = moments.unfold(-1, win, 1).sum(-1).unfold(-2, win, 1).sum(-1).mul_(1.0 / n)  # valid region
    ux, uy, uxx, uyy, uxy = means.unbind(1)
    two_vxy_c2 = uxy.addcmul_(ux, uy, value=-1).mul_(2 * cov_norm).add_((k2 * 1.0) ** 2)
    vx_vy_c2 = uxx.add_(uyy).addcmul_(ux, ux, value=-1).addcmul_(uy, uy, value=-1).mul_(cov_norm).add_((k2 * 1.0) ** 2)
    ux, uy = ux.add_(shift), uy.add_(shift)
    c1 = (k1 * 1.0) ** 2
    num = torch.mul(ux, uy).mul_(2).add_(c1).mul_(two_vxy_c2)
    den = ux.mul_(ux).addcmul_(uy, uy).add_(c1).mul_(vx_vy_c2)
    return num.div_(den).mean(dim=(2, 3), dtype=torch.float64).mean(dim=1)


def ssim_pairs(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], win_size: int = 7, k1: float = 0.01, k2: float = 0.03
) -> list[torch.Tensor]:
    """:func:`ssim` of each ``(a, b)`` pair (CPU, equal batch sizes), each image's window moments computed once.

    The pairs of a unit share their images (x and x_a with every D(x_a), each D(x_a) with three images), and
    four of SSIM's five box filters are moments of one image: each image is shifted by its own per-channel
    mean (the covariance is unchanged by a shift of either image, and the float32 moments stay free of
    cancellation) and its mean and mean square maps are kept while a pair still needs them; a pair adds one
    product and one box filter. Image by image, as :func:`ssim` on CPU. Same formula; the values differ from
    :func:`ssim` (shifted by the pair's common mean) by float32 rounding only: max 5.1e-6 on a unit of the
    default grid, where both are within 5e-6 of a float64 computation (benchmarks/ssim_shared.py).
    """
    return [values["ssim"] for values in pair_measures(pairs, win_size, k1, k2, differences=False)]


def pair_measures(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
    differences: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """SSIM (as :func:`ssim_pairs`) and, with ``differences``, MSE, MAE and L-inf (as :func:`diff_measures`) of
    each ``(a, b)`` pair, ``[B]`` float64 each, all of them one image at a time (CPU, equal batch sizes).

    One pass over each image pair while it is in cache, and no temporary larger than one image's (~0.8 MB for
    256x256 RGB in float32): a whole-batch difference (5.5 MB for 7 images) and its float64 reduction cost more
    than the SSIM of the pair, and blocks of that size are what glibc keeps after they are freed (the peak RSS
    of the grid's measures, docs/performance.md). SSIM is computed by the same code as :func:`ssim_pairs`
    (bit-identical); MSE and MAE are the same float32 difference summed in float64, per image (a dot product
    of the float64 difference: 2x faster than a float32->float64 reduction), so they equal :func:`diff_measures`
    up to the summation order (float64 rounding, ~1e-15 relative); L-inf is identical.
    """
    if not pairs:
        return []
    n = pairs[0][0].shape[0]
    if any(
        a.is_cuda or b.is_cuda or a.shape[0] != n or b.shape[0] != n or a.shape != b.shape or a.dim() != 4
        for a, b in pairs
    ):
        return [
            {"ssim": ssim(a, b, win_size, k1, k2), **(diff_measures(a, b) if differences else {})} for a, b in pairs
        ]
    uses: dict[int, int] = {}
    for a, b in pairs:
        for t in {id(a): a, id(b): b}:
            uses[t] = uses.get(t, 0) + 1
    names = ("ssim", "mse", "mae", "linf") if differences else ("ssim",)
    out = [{name: torch.empty(n, dtype=torch.float64) for name in names} for _ in pairs]
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    for i in range(n):
        left = dict(uses)
        moments: dict[int, tuple] = {}

        def of(t: torch.Tensor) -> tuple:
            if id(t) not in moments:
                img = t[i : i + 1].detach().float()
                win = min(win_size, img.shape[-1], img.shape[-2])
                win -= 1 if win % 2 == 0 else 0
                shift = img.mean(dim=(2, 3), keepdim=True)
                centred = img - shift
                both = torch.stack((centred, centred * centred), dim=1)
                maps = both.unfold(-1, win, 1).sum(-1).unfold(-2, win, 1).sum(-1).mul_(1.0 / (win * win))
                moments[id(t)] = (centred, shift, maps[:, 0], maps[:, 1], win)
            return moments[id(t)]

        for j, (a, b) in enumerate(pairs):
            xs, sx, ux, uxx, win = of(a)
            ys, sy, uy, uyy, _ = of(b)
            npx = win * win
            cov_norm = npx / (npx - 1) if npx > 1 else 1.0
            uxy = (xs * ys).unfold(-1, win, 1).sum(-1).unfold(-2, win, 1).sum(-1).mul_(1.0 / npx)
            two_vxy_c2 = uxy.addcmul_(ux, uy, value=-1).mul_(2 * cov_norm).add_(c2)
            vx_vy_c2 = torch.add(uxx, uyy).addcmul_(ux, ux, value=-1).addcmul_(uy, uy, value=-1).mul_(cov_norm).add_(c2)
            mx, my = torch.add(ux, sx), torch.add(uy, sy)
            num = torch.mul(mx, my).mul_(2).add_(c1).mul_(two_vxy_c2)
            den = mx.mul_(mx).addcmul_(my, my).add_(c1).mul_(vx_vy_c2)
            out[j]["ssim"][i] = num.div_(den).mean(dim=(2, 3), dtype=torch.float64).mean(dim=1)[0]
            if differences:
                d = torch.sub(a[i].detach().float(), b[i].detach().float()).flatten()
                wide = d.double()  # float64 sums as diff_measures; 1.5 MB, where the batch's would be 11 MB
                out[j]["mse"][i] = torch.dot(wide, wide) / d.numel()
                out[j]["mae"][i] = wide.abs_().sum() / d.numel()
                out[j]["linf"][i] = d.abs_().amax()
            for t in {id(a), id(b)}:
                left[t] -= 1
                if not left[t]:
                    moments.pop(t, None)  # no later pair needs it: at most a unit's shared images are kept
    return out


def diff_measures(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE, MAE and L-inf per image, ``[B]`` float64: one float32 difference, reduced in float64.

    Half the passes of :func:`mse` & co. (which difference in float64); the float32 difference of two
    pixels in [0, 1] is exact or off by one rounding (relative 6e-8), far inside the 1e-6 kept to scikit-image.
    """
    d = (a.detach().float() - b.detach().float()).flatten(1)
    n = d.shape[1]
    return {
        "mse": torch.linalg.vector_norm(d, 2, dim=1, dtype=torch.float64).square_().div_(n),
        "mae": torch.linalg.vector_norm(d, 1, dim=1, dtype=torch.float64).div_(n),
        "linf": d.abs().amax(dim=1).double(),
    }


def matched(cells, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """:func:`match_size` through the cells' memo: every score compares the same resized tensor (whose
    measures are then memoised too) instead of resizing again."""
    if images.shape[-2:] == reference.shape[-2:]:
        return images
    return cells.pair_measure("resized", images, reference, match_size)


def pair_images(cells) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The five image pairs of a :class:`~iqadef.core.cells.CellBatch`, sizes reconciled.

    A defended image compared with x or x_a is resized back to x's size; D(x) and D(x_a) are compared
    directly (D(x_a) is resized to D(x)'s size only if the two differ).
    """
    x, xa, dx, dxa = cells.clean, cells.adv, cells.def_clean, cells.def_adv
    return {
        "x_xa": (x, matched(cells, xa, x)),
        "x_dx": (x, matched(cells, dx, x)),
        "x_dxa": (x, matched(cells, dxa, x)),
        "xa_dxa": (xa, matched(cells, dxa, xa)),
        "dx_dxa": (dx, matched(cells, dxa, dx)),
    }


#: Most bytes of images stacked into one measure call on CUDA, where fewer, larger kernels pay; on CPU
#: each pair is measured on its own (stacking only copies: SSIM runs image by image there anyway).
STACK_BYTES_CUDA = 2**28


def measure_batches(batches: list) -> list[dict[str, torch.Tensor]]:
    """The 25 ``<measure>_<pair>`` columns of each cell batch (the unit's defences, computed together).

    A pair shared by several batches (x vs x_a, the same for every defence of a unit) or already measured
    (the cells' memo) is measured once; on CUDA pairs of equal shape are stacked into one call. SSIM and
    MSE go into the memo, where other scores (quality) find them.
    """
    wanted = [pair_images(c) for c in batches]
    memo_of = {}  # (id a, id b) -> (cells, a, b): one cells object whose memo holds the pair's values
    todo: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for cells, pairs in zip(batches, wanted):
        for a, b in pairs.values():
            key = (id(a), id(b))
            if key in todo or key in memo_of:
                continue
            memo_of[key] = cells
            if cells.cached_measure("pair-measures", a, b) is None:
                todo[key] = (a, b)
    cpu_keys = [k for k, (a, b) in todo.items() if not (a.is_cuda or b.is_cuda)]
    measured = dict(zip(cpu_keys, pair_measures([todo[k] for k in cpu_keys])))  # image by image, moments shared
    stacks: dict[tuple, list[tuple[int, int]]] = {}
    for key, (a, b) in todo.items():
        if key in measured:
            one = measured[key]
            _memoise(memo_of[key], a, b, one)
            continue
        stacks.setdefault((a.shape[1:], a.device, b.shape[1:]), []).append(key)
    for keys in stacks.values():
        for chunk in _chunks(keys, todo):
            a = torch.cat([todo[k][0] for k in chunk]) if len(chunk) > 1 else todo[chunk[0]][0]
            b = torch.cat([todo[k][1] for k in chunk]) if len(chunk) > 1 else todo[chunk[0]][1]
            values = diff_measures(a, b)
            values["ssim"] = ssim(a, b)
            start = 0
            for k in chunk:
                n = todo[k][0].shape[0]
                _memoise(memo_of[k], *todo[k], {name: v[start : start + n] for name, v in values.items()})
                start += n
    out = []
    for pairs in wanted:
        columns: dict[str, torch.Tensor] = {}
        for pair, (a, b) in pairs.items():
            values = memo_of[(id(a), id(b))].cached_measure("pair-measures", a, b)
            columns[f"psnr_{pair}"] = psnr_from_mse(values["mse"])
            for name in ("ssim", "mse", "mae", "linf"):
                columns[f"{name}_{pair}"] = values[name].cpu().clone()
        out.append({k: v.cpu() for k, v in columns.items()})
    return out


def _memoise(cells, a: torch.Tensor, b: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
    """The pair's measures into the cells' memo, where the other scores (quality, perturbation) find them."""
    cells.pair_measure("pair-measures", a, b, lambda *_: values)
    cells.pair_measure("ssim", a, b, lambda *_: values["ssim"])
    cells.pair_measure("mse", a, b, lambda *_: values["mse"])


def _chunks(keys: list, todo: dict) -> list[list]:
    first = todo[keys[0]][0]
    if not first.is_cuda:
        return [[k] for k in keys]
    per_pair = 2 * first.element_size() * first.numel()
    step = max(1, STACK_BYTES_CUDA // max(1, per_pair))
    return [keys[i : i + step] for i in range(0, len(keys), step)]


def as_float_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values).detach().to(torch.float64).cpu().reshape(-1)
