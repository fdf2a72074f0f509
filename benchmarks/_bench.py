"""Shared helpers of the benchmark scripts (timing, images, the metric, grid configs).

Every figure the benchmarks report is a ratio of two timings taken in the same process, interleaved
and repeated (median), so that the load of a shared machine cancels out as far as it can.
"""

from __future__ import annotations

import json

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (recorded in the results); returns the value in effect."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                outputs: dict[str, Any] | None = None,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Times each callable ``repeats`` times, round-robin with a rotating order (noise hits all alike).

    ``outputs`` (if given) receives each callable's last return value, so callers need no extra run.
    ``cpu`` (if given) receives the process CPU time of each call: on a machine shared with other
    jobs, wall time mostly measures how long we waited for a core, CPU time the work we did.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = candidates[name]()
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
            if outputs is not None:
                outputs[name] = result
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios (each round's two timings were taken back to back)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def synthetic_images(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """Writes ``count`` smooth-plus-texture RGB PNGs (deterministic) and returns their paths.

    Natural-ish content (low-frequency colour fields plus fine noise) so that JPEG, blur and the
    metric all have something to work on; each file differs, so content hashes differ.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        img = np.zeros((size, size, 3))
        for c in range(3):
            fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            img[..., c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        img += rng.normal(0.0, 0.06, img.shape)
        arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(arr, mode="RGB").save(path)
        paths.append(path)
    return paths


def load_batch(paths: list[Path]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tiny_iqa_weights(workdir: Path) -> tuple[Path | None, str]:
    """``(weights_path, description)``: the packaged weights if present, else a random state dict.

    Timings do not depend on the weight values; only the attack outputs do (and those are compared
    between two implementations that use the same weights).
    """
    from iqadef.plugins.metrics.embedded import TinyIQANet, packaged_weights

    if Path(str(packaged_weights())).is_file():
        return None, "packaged tiny_iqa.pt"
    torch.manual_seed(0)
    path = workdir / "tiny_iqa_random.pt"
    torch.save(TinyIQANet().state_dict(), path)
    return path, "random (packaged tiny_iqa.pt absent when measured)"


def metric_entry(weights_path: Path | None) -> Any:
    return {"name": "tiny-iqa", "weights_path": str(weights_path)} if weights_path else "tiny-iqa"


def load_metric(weights_path: Path | None, device: str = "cpu"):
    from iqadef.plugins.metrics.embedded import TinyIQA

    kwargs = {"weights_path": weights_path} if weights_path else {}
    return TinyIQA(**kwargs).load(device)


def grid_config(images: Path, output: Path, weights_path: Path | None, attacks: list, defences: list,
                batch_size: int, examples: int = 0):
    """A validated RunConfig (as ``iqadef run`` would build it from a registry file)."""
    from iqadef.config.registry import parse_run_config

    data = {
        "dataset": {"images": str(images)},
        "output": str(output),
        "device": "cpu",
        "batch_size": batch_size,
        "seed": 0,
        "examples": examples,
        "metrics": [metric_entry(weights_path)],
        "attacks": attacks,
        "defences": defences,
    }
    return parse_run_config(data, output.parent / "registry.yaml")


def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_result(out: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON result to ``out`` (folders made) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def module_at(rev: str, path: str = "src/iqadef/plugins/scores/_measures.py", name: str = "old_measures"):
    """The module ``path`` as it was at git revision ``rev``, imported under ``name`` (to time old code beside new)."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, check=True, capture_output=True, text=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
