"""The numerical effect of the run-level ``precision`` / ``channels_last`` / ``compile`` keys on scores
(issue 16, target 4), on this machine's CPU (CUDA when present and asked for).

    python benchmarks/precision.py                       # writes benchmarks/results/precision.json
    python benchmarks/precision.py --paper-images 2      # fewer images for the three paper metrics
    python benchmarks/precision.py --quick               # tiny sizes, one repeat (smoke run)

For each metric, f of the bundled images under each variant against fp32: max and mean |diff|, both also over
the metric's range, the Spearman correlation of the scores with fp32's, and (tiny-iqa, metaiqa) the cosine
between the gradients w.r.t. the image (what an attack follows). Variants: ``bf16`` and ``fp16`` the way the
registry key applies them (the plugin's ``precision_style``: ``cast``, weights and inputs cast, float32
outputs; tiny-iqa: ``autocast``, torch.autocast around the network, weights float32), the other style for
comparison (``bf16-autocast`` or ``bf16-cast``, ...), ``channels_last`` and ``compile`` (tiny-iqa only:
compiling a ResNe(X)t on a small CPU takes minutes).

tiny-iqa uses its packaged weights; linearity, metaiqa and spaq get random weights in their official file
layout (benchmarks/gpu.py writes them; tame statistics): the differences then say how much each network's
arithmetic amplifies rounding, not how the trained networks behave. Images: the 14 bundled 256x256 images
(the first ``--paper-images`` for the paper metrics), each metric at its defaults (its own resizing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CAST = ["bf16", "fp16"]


def _gpu_helpers():
    spec = importlib.util.spec_from_file_location("iqadef_bench_gpu_helpers", HERE / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bundled_images(n: int | None = None) -> torch.Tensor:
    from iqadef.core.dataset import builtin_images_dir, read_image

    paths = sorted(builtin_images_dir().glob("*.png"))[:n]
    return torch.stack([read_image(p) for p in paths])


def build(name: str, params: dict[str, Any], device: torch.device, **numerics: Any):
    """The metric as a registry builds it (so the numerics arrive as in a run), loaded on ``device``."""
    from iqadef.core.plugins import installed_plugins
    from iqadef.config.registry import parse_run_config

    data = {"metrics": [{"name": name, **params}], "attacks": ["fgsm"], "device": str(device), **numerics}
    config = parse_run_config(data, ROOT / "precision-bench.yaml", plugins=installed_plugins())
    return config.metrics[0].load(device)


def scores_and_grad(metric, x: torch.Tensor, batch: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """f over ``x`` in batches (and its gradient w.r.t. x when ``grad``), and the seconds it took."""
    start = time.perf_counter()
    out, grads = [], []
    for chunk in x.split(batch):
        if grad:
            xg = chunk.clone().requires_grad_(True)
            s = metric.score(xg)
            (g,) = torch.autograd.grad(s.sum(), xg)
            grads.append(g)
            out.append(s.detach())
        else:
            with torch.no_grad():
                out.append(metric.score(chunk))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).float().cpu(), (torch.cat(grads).cpu() if grad else None), time.perf_counter() - start


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def compare(base: tuple, other: tuple, span: float) -> dict[str, Any]:
    f0, g0, _ = base
    f1, g1, seconds = other
    diff = (f1 - f0).abs()
    out = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "max_abs_diff_over_range": float(diff.max()) / span, "mean_abs_diff_over_range": float(diff.mean()) / span,
           "spearman_vs_fp32": spearman(f0, f1), "finite": bool(torch.isfinite(f1).all()), "seconds": seconds}
    if g0 is not None and g1 is not None:
        cos = torch.nn.functional.cosine_similarity(g0.flatten(1), g1.flatten(1), dim=1)
        sign = (torch.sign(g0) == torch.sign(g1)).float().mean()
        out.update(grad_cosine_mean=float(cos.mean()), grad_cosine_min=float(cos.min()),
                   grad_sign_agreement=float(sign))
    return out


def measure_metric(name: str, params: dict[str, Any], x: torch.Tensor, device: torch.device, batch: int,
                   grad: bool, extra: list[str], repeats: int) -> dict[str, Any]:
    from iqadef.core.numerics import Numerics, prepare_module

    def best(metric) -> tuple:
        runs = [scores_and_grad(metric, x, batch, grad) for _ in range(repeats + 1)]  # the first is a warm-up
        times = [r[2] for r in runs[1:]] or [runs[0][2]]
        return runs[-1][0], runs[-1][1], statistics.median(times)

    base_metric = build(name, params, device)
    span, style = base_metric.span, base_metric.precision_style
    base = best(base_metric)
    record: dict[str, Any] = {"precision_style": style, "images": int(x.shape[0]), "size": list(x.shape[-2:]), "range": list(base_metric.range),
                              "fp32_seconds": base[2], "fp32_scores": [round(float(v), 5) for v in base[0]],
                              "variants": {}}
    del base_metric
    variants: dict[str, Any] = {p: {"precision": p} for p in CAST}   # as the registry key applies them
    other = "cast" if style == "autocast" else "autocast"
    variants.update({f"{p}-{other}": other for p in CAST})           # the other style, for comparison
    if "channels_last" in extra:
        variants["channels_last"] = {"channels_last": True}
    if "compile" in extra:
        variants["compile"] = {"compile": True}
    for label, how in variants.items():
        try:
            if how in ("cast", "autocast"):
                metric = build(name, params, device)
                for module in metric.precision_modules():
                    prepare_module(module, Numerics(label.split("-")[0]), how, device)
            else:
                metric = build(name, params, device, **how)
            result = compare(base, best(metric), span)
            result["speed_vs_fp32"] = base[2] / result["seconds"] if result["seconds"] else None
            record["variants"][label] = result
        except Exception as exc:  # noqa: BLE001 - recorded; the other variants still run
            record["variants"][label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(f"  {name:10s} {label:14s} {summary(record['variants'][label])}", flush=True)
    return record


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    grad = f", grad cos {result['grad_cosine_mean']:.4f}" if "grad_cosine_mean" in result else ""
    rho = result["spearman_vs_fp32"]
    return (f"max |diff| {result['max_abs_diff']:.4g} ({100 * result['max_abs_diff_over_range']:.3g}% of range), "
            f"mean {result['mean_abs_diff']:.4g}, rho {rho if rho is None else round(rho, 4)}{grad}, "
            f"{result['seconds']:.2f} s (x{result['speed_vs_fp32']:.2f} fp32 speed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs, no repeats, tiny-iqa and metaiqa only")
    parser.add_argument("--paper-images", type=int, default=4, help="images for linearity, metaiqa, spaq (default 4)")
    parser.add_argument("--metrics", nargs="*", default=["tiny-iqa", "metaiqa", "spaq", "linearity"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up (default 1)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or HERE / "results" / ("precision_quick.json" if args.quick else "precision.json")
    gpu = _gpu_helpers()
    images = bundled_images()
    if args.quick:
        images = torch.nn.functional.interpolate(images[:3], size=(48, 48), mode="bilinear", antialias=True)
        args.metrics = [m for m in args.metrics if m in ("tiny-iqa", "metaiqa")]
        args.paper_images, args.repeats = 3, 0
    result: dict[str, Any] = {
        "benchmark": "precision", "quick": args.quick,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)},
        "loadavg_before": os.getloadavg(), "metrics": {},
        "weights": "tiny-iqa: packaged; others: random, official layout (benchmarks/gpu.py write_metric_checkpoint)",
    }
    with tempfile.TemporaryDirectory(prefix="iqadef-precision-") as tmp:
        for name in args.metrics:
            params: dict[str, Any] = {}
            if name != "tiny-iqa":
                from iqadef.core.plugins import installed_plugins

                gpu.lift_pins(installed_plugins().get("metrics", name))
                params["weights_path"] = str(gpu.write_metric_checkpoint(name, Path(tmp), torch.device("cpu")))
                if args.quick and name == "metaiqa":
                    params["resize"] = 48
            x = (images if name == "tiny-iqa" else images[: args.paper_images]).to(device)
            extra = ["channels_last", "compile"] if name == "tiny-iqa" else ["channels_last"]
            if args.quick:
                extra = ["channels_last"]
            grad = name in ("tiny-iqa", "metaiqa")
            batch = 7 if name == "tiny-iqa" else 2
            print(f"{name}: {x.shape[0]} images {tuple(x.shape[-2:])}", flush=True)
            result["metrics"][name] = measure_metric(name, params, x, device, batch, grad, extra, args.repeats)
            result["loadavg_after"] = os.getloadavg()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")   # rewritten after each metric
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
