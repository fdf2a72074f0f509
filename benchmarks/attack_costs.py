"""Cost of the benchmark's spatial, colour and trained attacks on tiny-iqa (CPU): seconds per image, and
the training of the trained ones.

    python benchmarks/attack_costs.py [--threads 1] [--out benchmarks/results/attack_costs.json]

Images: the bundled photographs (256x256, the trained attacks' native size). Training runs on all of
them (the default training set) with the reference's settings, except that cnn-attack's five epochs are
measured as one and multiplied (each epoch is the same number of identical steps). cadv runs with random
colourisation weights in the official layout (the real file cannot be downloaded here; its cost does not
depend on the values) at 64x64, as its network's cost grows with the pixel count. Wall and process CPU
time are both recorded: on a shared machine the CPU time is the work, the wall time includes waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import load_batch, loadavg, machine, set_threads  # noqa: E402


def timed(fn):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "attack_costs.json")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    import os

    from iqadef.core.plugins import InstalledPlugins
    from iqadef.plugins.attacks.cadv import ColorizationNet
    from iqadef.plugins.attacks.uap import _image_entries, bundled_images_dir

    os.environ["TORCH_HOME"] = tempfile.mkdtemp()  # no earlier training is reused
    plugins = InstalledPlugins()
    metric = plugins.get("metrics", "tiny-iqa")().load("cpu")
    paths = [Path(str(e)) for e in _image_entries(bundled_images_dir())]
    images = load_batch(paths[:2])
    results: dict = {"machine": machine(), "threads": threads, "loadavg_before": loadavg(),
                     "training_images": len(paths), "image_side": images.shape[-1], "attacks": {}}

    def gain(adv, clean):
        with torch.no_grad():
            return float((metric(adv) - metric(clean)).mean())

    # Per-image attacks.
    attack = plugins.get("attacks", "stadv")()
    adv, wall, cpu = timed(lambda: attack.run(metric, images))
    results["attacks"]["stadv"] = {"seconds_per_image": wall / len(images), "cpu_seconds_per_image": cpu / len(images),
                                   "mean_gain": gain(adv, images)}

    small = F.interpolate(images, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    weights = Path(tempfile.mkdtemp()) / "cadv-colorization-model.pth"
    torch.manual_seed(0)
    torch.save(ColorizationNet().state_dict(), weights)
    attack = plugins.get("attacks", "cadv")(weights_path=str(weights))
    attack.load("cpu")
    adv, wall, cpu = timed(lambda: attack.run(metric, small))
    results["attacks"]["cadv"] = {"image_side": 64, "seconds_per_image": wall / len(small),
                                  "cpu_seconds_per_image": cpu / len(small), "weights": "random, official layout"}

    # Trained attacks: training at the reference's settings, then the application.
    for name, params, scale in (("cumulative-uap", {}, 1), ("generative-uap", {}, 1),
                                ("cnn-attack", {"epochs": 1}, 5)):
        attack = plugins.get("attacks", name)(**params)
        _, wall, cpu = timed(lambda: attack.trained_state(metric))
        apply = plugins.get("attacks", name)(**params)
        apply._trained = attack._trained
        adv, wall_run, cpu_run = timed(lambda: apply.run(metric, images))
        results["attacks"][name] = {"training_seconds": wall * scale, "training_cpu_seconds": cpu * scale,
                                    "measured_epochs": attack.epochs, "training_scaled_by": scale,
                                    "seconds_per_image": wall_run / len(images),
                                    "cpu_seconds_per_image": cpu_run / len(images), "mean_gain": gain(adv, images)}
        print(name, results["attacks"][name], flush=True)
    results["loadavg_after"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
