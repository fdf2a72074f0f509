"""Cost of the black-box attacks on tiny-iqa (CPU): seconds per query and per image at the default budget.

    python benchmarks/blackbox.py [--threads 1] [--side 256] [--out benchmarks/results/blackbox.json]

Each attack runs once on one generated image with a reduced budget (its defaults otherwise), through a
``QueryMetric`` that counts the queries; the time per query is set against a plain batched forward of the
metric (the floor: what the queries cost without the attack's own work) and extrapolated to the default
budget (parsimonious, patch-rs, grad-est 10000 queries, onepixel 11 x 300). Figures are wall and process CPU
time: on a shared machine wall time includes waiting for a core (the load is recorded).
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

from _bench import load_batch, loadavg, machine, set_threads, synthetic_images  # noqa: E402

#: name -> (reduced parameters, queries per image at the defaults)
ATTACKS = {
    "parsimonious": ({"queries": 300}, 10000),
    "patch-rs": ({"queries": 300}, 10000),
    "grad-est": ({"queries": 400}, 10000),
    "onepixel": ({"iters": 1}, 11 * 300),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "blackbox.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    from iqadef import QueryMetric
    from iqadef.core.plugins import InstalledPlugins

    plugins = InstalledPlugins()
    metric = plugins.get("metrics", "tiny-iqa")().load("cpu")
    image = load_batch(synthetic_images(Path(tempfile.mkdtemp()), 1, args.side))
    load_before = loadavg()

    with torch.no_grad():  # the floor: 64 images per forward, as the attacks batch their candidates
        batch = image.repeat(64, 1, 1, 1)
        metric.score(batch)
        start, start_cpu = time.perf_counter(), time.process_time()
        metric.score(batch)
        floor = {"wall_s": (time.perf_counter() - start) / 64, "cpu_s": (time.process_time() - start_cpu) / 64}

    results = {}
    for name, (params, default_queries) in ATTACKS.items():
        oracle = QueryMetric(metric, 1)
        attack = plugins.get("attacks", name)(**params)
        start, start_cpu = time.perf_counter(), time.process_time()
        attack.run(oracle, image, seed=0)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        queries = int(oracle.queries[0])
        results[name] = {
            "params": params, "queries": queries, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "wall_s_per_query": round(wall / queries, 5), "cpu_s_per_query": round(cpu / queries, 5),
            "cpu_over_floor": round(cpu / queries / floor["cpu_s"], 2),
            "default_queries": default_queries,
            "default_cpu_s_per_image": round(cpu / queries * default_queries, 1),
        }
        print(f"{name:13s} {queries:5d} queries  {wall:7.2f} s wall  {cpu:7.2f} s cpu  "
              f"{cpu / queries * 1000:6.1f} ms/query cpu ({results[name]['cpu_over_floor']}x the forward)  "
              f"~{results[name]['default_cpu_s_per_image']} s/image at the defaults")
    out = {"threads": threads, "side": args.side, "metric": "tiny-iqa", "device": "cpu",
           "floor_per_image": {k: round(v, 5) for k, v in floor.items()}, "attacks": results,
           "loadavg_before": load_before, "loadavg_after": loadavg(), "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"floor {floor['cpu_s'] * 1000:.1f} ms/image cpu; wrote {args.out}")


if __name__ == "__main__":
    main()
