"""Per-cell image measures (issue 16, target 2): CPU time per cell before/after, and GB/s vs a tensor copy.

    python benchmarks/measures.py [--threads 1] [--repeats 5] [--before REV] [--out benchmarks/results/measures.json]

One unit of the default grid's shape: x and x_a (7 x 3 x 256 x 256), 16 defences (13 keep the size, 3
resize to 128, 224 and 512), scored by the full-reference (25 columns) and quality scores. "before" is
``plugins/scores/_measures.py`` of git revision REV (default: the commit before the batched measures),
run as the scores then did it: each defence alone, SSIM of x vs x_a memoised, the quality score's own
resizes and PSNRs; "after" is this checkout's scores on one ``CellGroup``. The figures are process CPU
time (the machine is shared: wall time mostly measures waiting for a core), median of interleaved rounds.
``gb_per_s`` counts the bytes the measures must read at least (each unique image pair once, float32) and
sets them against a large tensor copy (read + write) on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import interleaved, loadavg, machine, med, module_at, set_threads  # noqa: E402

BEFORE = "6a18b57"  # the last commit with the per-defence measures


def old_module(rev: str):
    return module_at(rev)


def unit(batch: int = 7, side: int = 256, seed: int = 0):
    from iqadef.core.cells import CellBatch
    from iqadef.plugins.metrics.embedded import TinyIQA

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, side, side, generator=g)
    xa = ((x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1) * 255).round() / 255
    sizes = [side] * 13 + [128, 224, 512]
    memo: dict = {}
    f = torch.zeros(batch)
    metric = TinyIQA()
    cells = []
    for s in sizes:
        dx = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear") if s != side else x.flip(-1)
        dxa = torch.nn.functional.interpolate(xa, size=(s, s), mode="bilinear") if s != side else xa.flip(-1)
        cells.append(CellBatch(x, xa, dx.contiguous(), dxa.contiguous(), f, f, f, f, metric, memo))
    return cells


def before(old, cells) -> list[dict]:
    """The scores as they were: full-reference per defence (float64 differences, SSIM memoised), quality."""
    out = []
    for c in cells:
        cols = {}
        for pair, (a, b) in old.pair_images(c).items():
            diff = (a.double() - b.double()).flatten(1)
            err = diff.pow(2).mean(dim=1)
            cols[f"psnr_{pair}"] = old.psnr_from_mse(err)
            cols[f"ssim_{pair}"] = c.pair_measure("old-ssim", a, b, old.ssim)
            cols[f"mse_{pair}"] = err
            cols[f"mae_{pair}"] = diff.abs().mean(dim=1)
            cols[f"linf_{pair}"] = diff.abs().amax(dim=1)
        x = c.clean
        dxa, dx = old.match_size(c.def_adv, x), old.match_size(c.def_clean, x)
        cols["q"] = c.pair_measure("old-ssim", x, dxa, old.ssim) + old.psnr(x, dxa)
        cols["q_clean"] = c.pair_measure("old-ssim", x, dx, old.ssim) + old.psnr(x, dx)
        cols["unattacked"] = old.mse(x, old.match_size(c.adv, x)) == 0
        out.append(cols)
    for c in cells:
        c.memo.clear()
    return out


def after(cells) -> list[dict]:
    from iqadef.core.cells import CellGroup
    from iqadef.plugins.scores.full_reference import FullReferenceMeasures
    from iqadef.plugins.scores.quality import QualityScore

    CellGroup(cells)
    out = [FullReferenceMeasures().compute(c) | QualityScore().compute(c) for c in cells]
    cells[0].memo.clear()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "measures.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    old = old_module(args.before)
    cells = unit()
    outputs: dict = {}
    cpu: dict = {}
    with torch.no_grad():
        wall = interleaved({"before": lambda: before(old, cells), "after": lambda: after(cells)}, args.repeats,
                           outputs=outputs, cpu=cpu)
        big = torch.rand(64 * 2**20 // 4)
        copy_cpu: dict = {}
        interleaved({"copy": lambda: big.clone()}, args.repeats, cpu=copy_cpu)
    diffs = {}
    for name in outputs["after"][0]:
        if name.startswith(("psnr", "ssim", "mse", "mae", "linf")):
            a = torch.cat([o[name].double() for o in outputs["after"]])
            b = torch.cat([o[name].double() for o in outputs["before"]])
            finite = torch.isfinite(b)
            assert torch.equal(finite, torch.isfinite(a)), name
            diffs[name] = float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0
    n_cells = len(cells) * cells[0].clean.shape[0]
    x, xa = cells[0].clean, cells[0].adv
    unique_pairs = 1 + 4 * len(cells)  # x vs x_a once, then 4 pairs per defence
    # bytes read at least: each unique pair's two float32 images (resized pairs: at x's size)
    pair_bytes = 2 * x.numel() * x.element_size()
    copy_s = med(copy_cpu["copy"])
    result = {
        "what": "per-cell measures (full-reference + quality) of one default-grid unit: 16 defences x 7 images",
        "before_rev": args.before, "threads": threads, "repeats": args.repeats, "loadavg": loadavg(),
        "machine": machine(),
        "cpu_ms_per_cell": {k: round(1e3 * med(v) / n_cells, 3) for k, v in cpu.items()},
        "wall_ms_per_cell": {k: round(1e3 * med(v) / n_cells, 3) for k, v in wall.items()},
        "speedup_cpu": round(med(cpu["before"]) / med(cpu["after"]), 2),
        "unique_pairs_per_unit": unique_pairs,
        "gb_per_s": {k: round(unique_pairs * pair_bytes / med(v) / 1e9, 2) for k, v in cpu.items()},
        "copy_gb_per_s": round(2 * big.numel() * 4 / copy_s / 1e9, 2),
        "max_abs_diff_after_vs_before": max(diffs.values()),
        "max_abs_diff_by_column": {k: v for k, v in diffs.items() if v > 0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cpu_ms_per_cell", "speedup_cpu", "gb_per_s", "copy_gb_per_s",
                                             "max_abs_diff_after_vs_before")}, indent=2))
    del xa


if __name__ == "__main__":
    main()
