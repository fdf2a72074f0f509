"""Metric forwards against batch size (issue 16, target 3): images/s of f for batches of 1..64, and how far
results move with the batch size (what ``metric_batch`` trades).

    python benchmarks/metric_batch.py [--metrics tiny-iqa,metaiqa,spaq] [--batches 1,2,4,8,16,32,64]
                                      [--side 256] [--device cpu] [--out benchmarks/results/metric_batch.json]

tiny-iqa with its packaged weights (random ones when absent); metaiqa and spaq with random weights in their
official layouts (tests/support/official_layout.py), which time the same as the real ones. CPU: process CPU
time per image (the machine is shared); CUDA: wall time after synchronising. ``max_abs_diff_vs_batch_7`` is
the largest change of a score when the same images go through calls of another size than 7 (the default
grid's batch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

from _bench import loadavg, machine, set_threads  # noqa: E402


def build(name: str, device: str, workdir: Path):
    if name == "tiny-iqa":
        from iqadef.plugins.metrics.embedded import TinyIQA

        return TinyIQA().load(device)
    from official_layout import random_state

    if name == "metaiqa":
        from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet

        with torch.device("meta"):
            net = MetaIQANet()
        path = workdir / "metaiqa.pth"
        torch.save(random_state(net, seed=0), path)
        return MetaIQA(weights_path=str(path)).load(device)
    if name == "spaq":
        from iqadef.plugins.metrics.spaq import SPAQ, SPAQBaselineNet

        with torch.device("meta"):
            net = SPAQBaselineNet()
        path = workdir / "BL_release.pt"
        torch.save({"state_dict": random_state(net, seed=0)}, path)
        return SPAQ(weights_path=str(path)).load(device)
    raise SystemExit(f"--metrics: unknown {name!r} (tiny-iqa, metaiqa, spaq)")


def timed(call, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    call()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="tiny-iqa,metaiqa,spaq")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "metric_batch.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    cuda = args.device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(max(max(batches), 7) * 2, 3, args.side, args.side, generator=g).to(args.device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in args.metrics.split(","):
            metric = build(name, args.device, Path(tmp))
            n_all = images.shape[0] - images.shape[0] % 7
            ref = torch.cat([metric.score(images[i:i + 7]) for i in range(0, n_all, 7)])
            rows = {}
            for b in batches:
                x = images[:b]
                metric.score(x)  # warm-up
                best = min(timed(lambda: metric.score(x), cuda) for _ in range(args.repeats))
                out = torch.cat([metric.score(images[i:min(i + b, n_all)]) for i in range(0, n_all, b)])
                rows[str(b)] = {"images_per_s": round(b / best, 2),
                                "max_abs_diff_vs_batch_7": float((out - ref).abs().max())}
                print(name, b, rows[str(b)], flush=True)
            results[name] = {"range": list(metric.range), "batches": rows}
            del metric
    report = {"what": "metric forward throughput against batch size", "device": args.device, "side": args.side,
              "threads": threads, "repeats": args.repeats, "loadavg": loadavg(), "machine": machine(),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
