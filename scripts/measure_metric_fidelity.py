"""Measure how far iqadef's former metric preprocessing was from the original repositories' pipelines.

For ``linearity``, ``metaiqa`` and ``spaq`` it compares, on photographs shipped with scikit-image:

* ``former``: the former default (torch's antialiased bilinear to the original size: 498x664, 224x224,
  shorter side 512), today ``preprocess: msu`` with that ``resize``;
* ``official``: ``preprocess: official`` (the originals' PIL / scikit-image pipelines, bit for bit);
* ``msu``: today's default, the image at its own size (the study's MSU wrappers).

It reports the network inputs' largest difference (8-bit levels), the scores' relative difference and the
cosine between the input gradients. The official checkpoints cannot be downloaded here, so the networks
carry random weights in the official key layout (``tests/support/official_layout.py``, as the tests);
the numbers show the size of the effect, not the paper's values. CPU, a few minutes::

    python scripts/measure_metric_fidelity.py [--metrics metaiqa spaq linearity] [--out fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from official_layout import random_state  # noqa: E402

from iqadef.plugins.metrics.linearity import Linearity, LinearityNet  # noqa: E402
from iqadef.plugins.metrics.metaiqa import MetaIQA, MetaIQANet  # noqa: E402
from iqadef.plugins.metrics.spaq import SPAQ, SPAQBaselineNet  # noqa: E402


def photographs() -> dict[str, torch.Tensor]:
    """Natural images of several sizes (KonIQ-10k's 768x1024 included), as [1, 3, H, W] in [0, 1]."""
    arrays = {"chelsea 300x451": skimage.data.chelsea(), "coffee 400x600": skimage.data.coffee(),
              "astronaut 512x512": skimage.data.astronaut(),
              "retina 768x1024": skimage.data.retina()[300:1068, 200:1224]}
    return {name: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255
            for name, a in arrays.items()}


def checkpoint(name: str, folder: Path) -> Path:
    """A random checkpoint in the official layout (file structure as the release files)."""
    with torch.device("meta"):
        net = {"linearity": LinearityNet, "metaiqa": MetaIQANet, "spaq": SPAQBaselineNet}[name]()
    state = random_state(net, seed=0)
    path = folder / f"{name}.pth"
    if name == "linearity":
        torch.save({"model": state, "k": [1.0, 1.0, 1.0], "b": [0.0, 0.0, 0.0]}, path)   # raw network output
    elif name == "spaq":
        torch.save({"state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


def variants(name: str, path: Path) -> dict:
    cls = {"linearity": Linearity, "metaiqa": MetaIQA, "spaq": SPAQ}[name]
    former = {"linearity": [498, 664], "metaiqa": 224, "spaq": 512}[name]
    made = {"former": cls(resize=former, weights_path=path), "official": cls(preprocess="official", weights_path=path),
            "msu": cls(weights_path=path)}
    made["former"].load("cpu")
    for metric in made.values():                        # one network, three preprocessings
        metric.net, metric._loaded_on = made["former"].net, made["former"]._loaded_on
        if name == "linearity":
            metric.k, metric.b = made["former"].k, made["former"].b
    return made


def score_and_gradient(metric, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    score = metric.score(x)
    (grad,) = torch.autograd.grad(score.sum(), x)
    return float(score.detach()), grad.flatten()


def measure(name: str, folder: Path) -> list[dict]:
    made = variants(name, checkpoint(name, folder))
    rows = []
    for image, x in photographs().items():
        with torch.no_grad():
            former_in, official_in = made["former"].prepare(x), made["official"].prepare(x)
        out = {"metric": name, "image": image, "network_input": list(official_in.shape[-2:])}
        if former_in.shape == official_in.shape:
            out["input_max_diff_levels"] = round(float((former_in - official_in).abs().max() * 255), 2)
        results = {key: score_and_gradient(metric, x) for key, metric in made.items()}
        official_score, official_grad = results["official"]
        for key in ("former", "msu"):
            score, grad = results[key]
            out[f"{key}_rel_diff"] = round(abs(score - official_score) / abs(official_score), 4)
            cosine = torch.nn.functional.cosine_similarity(grad, official_grad, dim=0)
            out[f"{key}_grad_cosine"] = round(float(cosine), 3)
        out["scores"] = {key: round(s, 5) for key, (s, _) in results.items()}
        print(json.dumps(out), flush=True)
        rows.append(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", nargs="+", default=["metaiqa", "spaq", "linearity"])
    parser.add_argument("--out", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.metrics for row in measure(name, Path(tmp))]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
