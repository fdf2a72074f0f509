"""GPU benchmark: the paper-size checks of issue 16 (item 6) on CUDA, with random weights in the official layouts.

    bash benchmarks/gpu.sh                             # CUDA; writes benchmarks/results/gpu-<date>.json
    bash benchmarks/gpu.sh --out /tmp/gpu.json --only linearity grid
    python benchmarks/gpu.py --quick --device cpu      # smoke run: tiny sizes, 1 repeat (figures meaningless)

No GPU machine has the official checkpoints (and none can download them), and timings do not depend on the
weight values, so every network gets a *random* checkpoint written in its official file layout (the keys,
shapes and wrapping of ``p1q2.pth``, ``BL_release.pt``, ``metaiqa.pth``, ``256x256_diffusion_uncond.pt``,
``model_denoising.pth``, ``realesr-general(-wdn)-x4v3.pth``) into a temporary folder; the plugins load them
through their ``weights_path`` parameters, exactly as they load the real files.

Checks, in order (each one isolated: an exception is recorded in its entry and the rest go on; each bounded
in time: once a check has used its budget no further repeats are started; once the whole run has used
``--budget`` the remaining checks are recorded as skipped):

* ``<metric>.load``, ``.forward_backward``, ``.ifgsm``, ``.batching``, ``.precision`` for linearity, spaq,
  metaiqa, at the input size each network sees in the original code (498x664, shorter side 512, 224x224);
* ``diffpure.load``, ``.purify`` (t=5, one 256x256 image, the real 553M-parameter guided-diffusion UNet),
  ``.precision``, ``.fp16_option`` (the plugin's own ``fp16: true``, as the reference runs it; CUDA only);
* ``mprnet`` and ``realesrgan``: ``.load``, ``.purify`` (one 299x299 image), ``.precision``;
* ``certified.ms``, ``.dms``, ``.rs``, ``.drs``: median smoothing and dms-iqa at n = 1000, randomized smoothing and
  denoised smoothing at the reference's n0 = 100 + n = 1000, of tiny-iqa (one 256x256 image): seconds per image;
  ``certified.ddrs``, ``.densepure``: diffusion-denoised smoothing and DensePure (2 reverse steps) with the
  real-size guided-diffusion UNet (random weights), a few noisy copies timed and the reference's 1100 per image
  extrapolated;
* ``protocol.apgd_eot_diffpure``, ``protocol.apgd_bpda_jpeg``, ``protocol.square_queries``: the robustness
  protocol's attacks (docs/evaluation.md) at their real size: APGD through DiffPure (t=5, the real-size UNet,
  EOT 8 draws stacked in one batch) and through JPEG (BPDA, batch 7) on SPAQ's network at 224x224, and the
  Square attack's score queries per second through JPEG;
* ``grid``: ``iqadef run registry.yaml`` (the default grid) into a temporary folder, in a child process.

Timings are CUDA-synchronised, the median of ``--repeats`` runs after ``--warmup`` runs; peak memory is
``torch.cuda.max_memory_allocated`` (reset before each check; CUDA only). ``precision`` times the forward pass
in fp32 (torch's defaults: cuDNN convolutions may use TF32), in strict IEEE fp32 (TF32 off: the baseline of
the differences, CUDA only) and under ``torch.autocast`` bf16 / fp16, and reports how far the scores (or
purified images) move: measured only, nothing here changes a plugin's precision.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _bench as B  # noqa: E402

METRICS = ("linearity", "spaq", "metaiqa")
DEFENCES = ("diffpure", "mprnet", "realesrgan")
GROUPS = (*METRICS, *DEFENCES, "certified", "protocol", "grid")
#: The quick run's stand-in for guided-diffusion's 256x256 UNet (the same code path, a tiny configuration).
QUICK_GUIDED_NAME = "bench-guided-tiny"
#: torch's default fp32 (cuDNN may use TF32), strict IEEE fp32 (CUDA only), and the two autocast types.
PRECISION_VARIANTS = ("fp32", "fp32-ieee", "bf16", "fp16")


@dataclasses.dataclass
class Settings:
    """Sizes of a run. The full run is sized to finish in under 8 minutes on one recent GPU."""

    quick: bool
    metric_sizes: dict[str, tuple[int, int]]
    metric_params: dict[str, dict[str, Any]]
    batch: int
    ifgsm_params: dict[str, Any]
    batch_sizes: tuple[int, ...]
    precision_batch: int
    precision_variants: tuple[str, ...]
    defence_size: int
    diffpure_size: int
    diffpure_t: int
    repeats: int
    warmup: int
    check_budget_s: float
    sweep_budget_s: float
    total_budget_s: float
    grid_limit: int | None

    @classmethod
    def make(cls, quick: bool) -> "Settings":
        if quick:  # native resizing off and small patches: the same code paths on inputs a CPU does in seconds
            return cls(quick=True,
                       metric_sizes={"linearity": (32, 32), "spaq": (32, 32), "metaiqa": (32, 32)},
                       metric_params={"linearity": {"resize": None}, "metaiqa": {"resize": None},
                                      "spaq": {"resize": None, "patch_size": 32, "stride": 32}},
                       batch=1, ifgsm_params={"iters": 1}, batch_sizes=(1, 2), precision_batch=1,
                       precision_variants=("fp32", "bf16"),
                       defence_size=16, diffpure_size=16, diffpure_t=2, repeats=1, warmup=0,
                       # budgets that never cut a smoke run short, even on a loaded machine
                       check_budget_s=300.0, sweep_budget_s=600.0, total_budget_s=1800.0, grid_limit=1)
        return cls(quick=False,
                   # what each network sees in the original code: LinearityIQA's --resize 498x664, SPAQ's
                   # shorter side 512 (a 4:3 photo), MetaIQA's 224x224; the plugins' own defaults otherwise
                   metric_sizes={"linearity": (498, 664), "spaq": (512, 683), "metaiqa": (224, 224)},
                   metric_params={name: {} for name in METRICS},
                   batch=4, ifgsm_params={}, batch_sizes=(1, 2, 4, 8, 16, 32, 64), precision_batch=4,
                   precision_variants=PRECISION_VARIANTS,
                   defence_size=299, diffpure_size=256, diffpure_t=5, repeats=5, warmup=2,
                   check_budget_s=30.0, sweep_budget_s=90.0, total_budget_s=450.0, grid_limit=None)


# ------------------------------------------------------------------------------------------------
# timing
def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], Any], *, repeats: int, warmup: int, budget_s: float,
          sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Median wall time of ``fn`` over up to ``repeats`` runs after ``warmup`` runs, each synchronised.

    No run starts once ``budget_s`` has passed since the first one; at least one is always timed (if the
    warm-up alone used the budget, its last run is the measurement: ``from_warmup``). ``output`` is the
    last run's return value.
    """
    start = clock()
    warm: list[float] = []
    output = None
    for _ in range(warmup):
        sync()
        t0 = clock()
        output = fn()
        sync()
        warm.append(clock() - t0)
        if clock() - start > budget_s:
            break
    times: list[float] = []
    for _ in range(max(1, repeats)):
        if (times or warm) and clock() - start > budget_s:
            break
        sync()
        t0 = clock()
        output = fn()
        sync()
        times.append(clock() - t0)
    from_warmup = not times
    measured = times or warm[-1:]
    return {"wall_s": float(statistics.median(measured)), "times_s": [round(t, 6) for t in measured],
            "warmup_s": [round(t, 6) for t in warm], "repeats_done": len(times), "from_warmup": from_warmup,
            "budget_exceeded": len(times) < max(1, repeats), "output": output}


def peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class Bench:
    """Runs checks one by one, records each (time, memory or error) and rewrites the JSON after every check."""

    def __init__(self, settings: Settings, device: torch.device, out: Path, header: dict[str, Any]):
        self.settings, self.device, self.out = settings, device, out
        self.results: dict[str, Any] = {**header, "checks": OrderedDict()}
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.settings.total_budget_s - self.elapsed()

    def check(self, name: str, fn: Callable[[], dict[str, Any]], *, requires: str | None = None) -> bool:
        """Runs ``fn`` (returns the check's record); an exception becomes ``status: error``. Never raises."""
        checks = self.results["checks"]
        if requires is not None and checks.get(requires, {}).get("status") != "ok":
            record: dict[str, Any] = {"status": "error", "error": f"not run: {requires} did not succeed"}
        elif self.remaining() <= 0:
            record = {"status": "skipped", "reason": f"total budget of {self.settings.total_budget_s:.0f} s used"}
        else:
            free_memory(self.device)
            reset_peak(self.device)
            before = int(torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else None
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                record = {"status": "ok", **fn()}
                record.setdefault("peak_mem_bytes", peak_memory(self.device))
            except Exception as exc:  # noqa: BLE001 - a check's failure must not stop the others
                record = {"status": "error", "error": short_error(exc),
                          "traceback": traceback.format_exc(limit=-6)[-3000:]}
            record["check_s"] = round(time.perf_counter() - t0, 3)
            record["check_cpu_s"] = round(time.process_time() - cpu0, 3)  # this process only (not the grid's child)
            record["mem_allocated_before_bytes"] = before
            free_memory(self.device)
        record.pop("output", None)
        checks[name] = record
        self.save()
        print(f"  {name:<28} {summary_line(record)}", flush=True)
        return record["status"] == "ok"

    def save(self) -> None:
        self.results["total_s"] = round(self.elapsed(), 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".part")
        text = json.dumps(finite_or_none(self.results), indent=1, default=_json_default, allow_nan=False)
        tmp.write_text(text + "\n")
        os.replace(tmp, self.out)


def finite_or_none(value: Any) -> Any:
    """The record with NaN and infinities as null (strict JSON; a non-finite output is flagged by ``finite``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def summary_line(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"{record['status'].upper()}: {record.get('error') or record.get('reason')}"
    parts = [f"{record['wall_s']:.4f} s" if isinstance(record.get("wall_s"), float) else ""]
    if record.get("images_per_s"):
        parts.append(f"{record['images_per_s']:.1f} img/s")
    if record.get("peak_mem_bytes"):
        parts.append(f"peak {record['peak_mem_bytes'] / 2**20:.0f} MiB")
    return ", ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------
# random checkpoints in the official layouts
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def random_state(model: nn.Module, seed: int, device: torch.device) -> OrderedDict:
    """Random tensors with the keys and shapes of ``model``'s state dict (built on the meta device).

    Tame statistics so that activations stay finite through 100+ layers: conv/linear weights ~ N(0, 1/fan_in),
    norm scales ~ U(0.5, 1), running variances ~ U(0.5, 1.5), PReLU slopes 0.25, everything else ~ N(0, 0.01).
    Drawn on ``device`` (553M values take seconds on a CPU), returned on the CPU.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    state = OrderedDict()
    for key, template in model.state_dict().items():
        prefix, _, name = key.rpartition(".")
        module = model.get_submodule(prefix) if prefix else model
        shape = template.shape
        if not template.is_floating_point():
            value = torch.zeros(shape, dtype=template.dtype)
        elif isinstance(module, nn.PReLU):
            value = torch.full(shape, 0.25)
        elif name == "running_var":
            value = torch.rand(shape, generator=g, device=device) + 0.5
        elif isinstance(module, _NORMS) and name == "weight":
            value = torch.rand(shape, generator=g, device=device) * 0.5 + 0.5
        elif name.endswith("weight") and len(shape) >= 2:
            value = torch.randn(shape, generator=g, device=device) / math.sqrt(max(1, math.prod(shape[1:])))
        else:
            value = torch.randn(shape, generator=g, device=device) * 0.01
        state[key] = value.cpu()
    return state


def linearity_layout() -> nn.Module:
    """``IQAModel`` of lidq92/LinearityIQA (IQAmodel.py; arch resnext101_32x8d, pool avg, P6 = P7 = 1)."""
    import torchvision

    def reduction(width: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(width, 1024), nn.BatchNorm1d(1024), nn.Linear(1024, 256),
                             nn.BatchNorm1d(256), nn.Linear(256, 64), nn.BatchNorm1d(64), nn.ReLU())

    model = nn.Module()
    model.features = nn.Sequential(*list(torchvision.models.resnext101_32x8d().children())[:-2])
    model.dr6, model.dr7 = reduction(1024), reduction(2048)
    model.regr6, model.regr7, model.regression = nn.Linear(64, 1), nn.Linear(64, 1), nn.Linear(128, 1)
    return model


def spaq_layout() -> nn.Module:
    """``Baseline`` of h4nwei/SPAQ (BL_demo.py): a torchvision ResNet-50 as ``backbone`` with fc 2048 -> 1."""
    import torchvision

    model = nn.Module()
    model.backbone = torchvision.models.resnet50()
    model.backbone.fc = nn.Linear(2048, 1)
    return model


def metaiqa_layout() -> nn.Module:
    """``Net(resnet, BaselineModel1(1, 0.5, 1000))`` of zhuhancheng/MetaIQA: ResNet-18 with its fc, then the head."""
    import torchvision

    head = nn.Module()
    head.fc1, head.bn1, head.relu1 = nn.Linear(1000, 1024), nn.BatchNorm1d(1024), nn.PReLU()
    head.fc2, head.bn2, head.relu2 = nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.PReLU()
    head.fc3 = nn.Linear(512, 1)
    model = nn.Module()
    model.resnet_layer, model.net = torchvision.models.resnet18(), head
    return model


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def write_metric_checkpoint(name: str, folder: Path, device: torch.device) -> Path:
    """A random checkpoint of ``name`` in the official file layout (what the plugin's loader expects)."""
    if name == "linearity":  # {'model': state, 'k': [...], 'b': [...]} (k[0], b[0] calibrate the score)
        path = folder / "p1q2.pth"
        torch.save({"model": random_state(on_meta(linearity_layout), 0, device),
                    "k": [20.0, 1.0, 1.0], "b": [50.0, 0.0, 0.0]}, path)
    elif name == "spaq":  # {'state_dict': Baseline state dict}
        path = folder / "BL_release.pt"
        torch.save({"state_dict": random_state(on_meta(spaq_layout), 1, device)}, path)
    elif name == "metaiqa":  # the bare state dict of Net
        path = folder / "metaiqa.pth"
        torch.save(random_state(on_meta(metaiqa_layout), 2, device), path)
    else:
        raise ValueError(f"no checkpoint layout for metric {name!r}")
    return path


def write_defence_checkpoints(name: str, folder: Path, device: torch.device, quick: bool) -> dict[str, Any]:
    """The defence's plugin parameters pointing at random checkpoints in its official layout."""
    if name == "mprnet":  # train.py of swz30/MPRNet: {'epoch', 'state_dict' (DataParallel keys), 'optimizer'}
        from iqadef.plugins.defences._mprnet_arch import OFFICIAL_CONFIG, MPRNet

        state = random_state(on_meta(lambda: MPRNet(**OFFICIAL_CONFIG)), 3, device)
        path = folder / "model_denoising.pth"
        torch.save({"epoch": 0, "state_dict": OrderedDict(("module." + k, v) for k, v in state.items()),
                    "optimizer": {}}, path)
        return {"weights_path": str(path)}
    if name == "realesrgan":  # the Real-ESRGAN releases: {'params': state}, two files blended by denoise_strength
        from iqadef.plugins.defences._realesrgan_arch import OFFICIAL_CONFIG, SRVGGNetCompact

        params = {}
        for seed, (param, filename) in enumerate((("weights_path", "realesr-general-x4v3.pth"),
                                                  ("wdn_weights_path", "realesr-general-wdn-x4v3.pth"))):
            path = folder / filename
            torch.save({"params": random_state(on_meta(lambda: SRVGGNetCompact(**OFFICIAL_CONFIG)), 4 + seed,
                                               device)}, path)
            params[param] = str(path)
        return params
    if name == "diffpure":  # guided-diffusion releases a bare state dict
        from iqadef.plugins.defences import diffpure
        from iqadef.plugins.defences._guided_diffusion import IMAGENET_256_UNCOND, GuidedUNet, GuidedUNetConfig

        config, model = IMAGENET_256_UNCOND, "guided-256"
        if quick:  # same loader and sampler, a UNet a CPU runs in a second (as tests/plugins/defences/test_diffpure.py)
            config = GuidedUNetConfig(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                                      attention_resolutions=(8,), num_head_channels=16)
            diffpure.GUIDED_MODELS[QUICK_GUIDED_NAME] = diffpure.GuidedModel(
                config, dataclasses.replace(diffpure.GUIDED_256_WEIGHTS, filename="bench_tiny_uncond.pt",
                                            urls=(), sha256=None))
            model = QUICK_GUIDED_NAME
        path = folder / "256x256_diffusion_uncond.pt"
        torch.save(random_state(on_meta(lambda: GuidedUNet(config)), 6, device), path)
        return {"model": model, "weights_path": str(path)}
    raise ValueError(f"no checkpoint layout for defence {name!r}")


def lift_pins(cls: type) -> list[str]:
    """Random checkpoints cannot match a pinned sha256: unpin the plugin module's specs (as the tests do)."""
    from iqadef.core.weights import WeightSpec

    module = sys.modules[cls.__module__]
    lifted = []
    for attr, value in list(vars(module).items()):
        if isinstance(value, WeightSpec) and value.sha256:
            setattr(module, attr, dataclasses.replace(value, sha256=None))
            lifted.append(value.filename)
    if lifted:
        cls.weights = tuple(dataclasses.replace(w, sha256=None) if w.sha256 else w for w in cls.weights)
    return lifted


def plugin_params(cls: type, wanted: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``wanted`` restricted to the parameters ``cls`` declares (and the names it did not know)."""
    declared = {p.name for p in cls.params}
    return {k: v for k, v in wanted.items() if k in declared}, sorted(set(wanted) - declared)


# ------------------------------------------------------------------------------------------------
# inputs
def smooth_images(batch: int, height: int, width: int, seed: int, device: torch.device) -> torch.Tensor:
    """Natural-ish images in [0, 1]: coarse random colour fields (bicubic) plus fine noise; seeded."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 32), max(2, width // 32), generator=g)
    base = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (base + 0.06 * torch.randn(batch, 3, height, width, generator=g)).clamp(0.0, 1.0).to(device)


# ------------------------------------------------------------------------------------------------
# precision
@contextlib.contextmanager
def precision_mode(variant: str, device: torch.device):
    """``fp32``: torch's defaults; ``fp32-ieee``: TF32 off (CUDA); ``bf16`` / ``fp16``: ``torch.autocast``."""
    if variant == "fp32":
        yield
    elif variant == "fp32-ieee":
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    else:
        with torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[variant]):
            yield


def differences(output: torch.Tensor, baseline: torch.Tensor, span: float | None) -> dict[str, Any]:
    """How far ``output`` is from ``baseline``: scores (``span`` = the metric's range) or images in [0, 1]."""
    diff = (output.float() - baseline.float()).abs()
    out: dict[str, Any] = {"finite": bool(torch.isfinite(output).all()), "max_abs_diff": float(diff.max()),
                           "mean_abs_diff": float(diff.mean())}
    if span:
        out["max_abs_diff_over_range"] = float(diff.max()) / span
    else:
        mse = float((diff ** 2).mean())
        out["psnr_vs_baseline_db"] = None if mse == 0 else 10 * math.log10(1.0 / mse)  # None: identical
    return out


def precision_check(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, span: float | None,
                    s: Settings, device: torch.device) -> dict[str, Any]:
    """Forward time and output difference of each precision variant; the baseline is strict fp32."""
    sync = synchronizer(device)
    baseline_name = "fp32-ieee" if device.type == "cuda" else "fp32"
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, torch.Tensor] = {}
    for variant in PRECISION_VARIANTS:
        if variant not in s.precision_variants and variant != baseline_name:
            results[variant] = {"status": "skipped", "reason": "not in this run's settings (quick)"}
            continue
        if variant == "fp32-ieee" and device.type != "cuda":
            results[variant] = {"status": "skipped", "reason": "CUDA only (no TF32 on a CPU: fp32 is IEEE already)"}
            continue
        if time.perf_counter() - start > s.sweep_budget_s:
            results[variant] = {"status": "skipped", "reason": f"check budget of {s.sweep_budget_s:.0f} s used"}
            continue
        try:
            def run(variant=variant):
                with torch.no_grad(), precision_mode(variant, device):
                    return fn(x)
            r = timed(run, repeats=s.repeats, warmup=s.warmup, budget_s=s.check_budget_s, sync=sync)
            outputs[variant] = r.pop("output").float()
            results[variant] = {"status": "ok", **r, "images_per_s": x.shape[0] / r["wall_s"]}
        except Exception as exc:  # noqa: BLE001 - e.g. an op without a half kernel: recorded per variant
            results[variant] = {"status": "error", "error": short_error(exc)}
    if baseline_name not in outputs:
        raise RuntimeError(f"the {baseline_name} baseline did not run: {results[baseline_name]}")
    for variant, output in outputs.items():
        results[variant].update(differences(output, outputs[baseline_name], span))
        if "fp32" in outputs:
            results[variant]["speedup_vs_fp32"] = results["fp32"]["wall_s"] / results[variant]["wall_s"]
    errors = [v for v, r in results.items() if r["status"] == "error"]
    record = {"wall_s": time.perf_counter() - start, "batch": x.shape[0], "baseline": baseline_name,
              "variants": results}
    if errors:
        record.update(status="error", error="variants failed: " + ", ".join(f"{v} ({results[v]['error']})"
                                                                            for v in errors))
    return record


# ------------------------------------------------------------------------------------------------
# checks
def metric_checks(bench: Bench, name: str, folder: Path) -> None:
    from iqadef.core.plugins import installed_plugins

    s, device = bench.settings, bench.device
    sync = synchronizer(device)
    height, width = s.metric_sizes[name]
    held: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        cls = installed_plugins().get("metrics", name)
        pins = lift_pins(cls)
        t0 = time.perf_counter()
        path = write_metric_checkpoint(name, folder, device)
        written = time.perf_counter() - t0
        params, unknown = plugin_params(cls, {**s.metric_params[name], "weights_path": str(path)})
        t0 = time.perf_counter()
        held["metric"] = cls(**params).load(device)
        sync()
        return {"wall_s": time.perf_counter() - t0, "checkpoint_write_s": written,
                "checkpoint_bytes": path.stat().st_size, "params": params, "params_not_declared": unknown,
                "pins_lifted": pins, "input_size": [height, width]}

    def forward_backward() -> dict[str, Any]:
        metric = held["metric"]
        x = smooth_images(s.batch, height, width, 0, device)

        def step():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(metric.score(xg).sum(), xg)
            return grad
        r = timed(step, repeats=s.repeats, warmup=s.warmup, budget_s=s.check_budget_s, sync=sync)
        grad = r.pop("output")
        return {**r, "batch": s.batch, "input_size": [height, width], "images_per_s": s.batch / r["wall_s"],
                "grad_finite": bool(torch.isfinite(grad).all()), "grad_abs_mean": float(grad.abs().mean())}

    def ifgsm() -> dict[str, Any]:
        metric = held["metric"]
        attack = installed_plugins().get("attacks", "ifgsm")(**s.ifgsm_params)
        x = smooth_images(s.batch, height, width, 1, device)
        r = timed(lambda: attack.run(metric, x, seed=0), repeats=max(1, s.repeats - 2), warmup=min(1, s.warmup),
                  budget_s=s.check_budget_s, sync=sync)
        adversarial = r.pop("output")
        with torch.no_grad():
            gain = (metric.score(adversarial) - metric.score(x)).float()
        return {**r, "batch": s.batch, "input_size": [height, width], "iters": attack.iters,
                "images_per_s": s.batch / r["wall_s"], "step_s": r["wall_s"] / attack.iters,
                "score_gain_mean": float(gain.mean()), "linf": float((adversarial - x).abs().max())}

    def batching() -> dict[str, Any]:
        metric = held["metric"]
        start = time.perf_counter()
        by_batch: dict[str, Any] = {}
        for size in s.batch_sizes:
            if time.perf_counter() - start > s.sweep_budget_s:
                by_batch[str(size)] = {"status": "skipped", "reason": f"check budget of {s.sweep_budget_s:.0f} s used"}
                continue
            reset_peak(device)
            try:
                x = smooth_images(size, height, width, 2, device)

                def forward(x=x):
                    with torch.no_grad():
                        return metric.score(x)
                r = timed(forward, repeats=max(1, s.repeats - 2), warmup=min(1, s.warmup),
                          budget_s=s.check_budget_s, sync=sync)
                r.pop("output")
                by_batch[str(size)] = {"status": "ok", **r, "images_per_s": size / r["wall_s"],
                                       "peak_mem_bytes": peak_memory(device)}
            except torch.cuda.OutOfMemoryError as exc:
                by_batch[str(size)] = {"status": "out_of_memory", "error": short_error(exc)}
                break
            finally:
                x = None
                free_memory(device)
        done = {k: v for k, v in by_batch.items() if v["status"] == "ok"}
        best = max(done, key=lambda k: done[k]["images_per_s"]) if done else None
        return {"wall_s": time.perf_counter() - start, "input_size": [height, width], "by_batch": by_batch,
                "best_batch": int(best) if best else None,
                "images_per_s": done[best]["images_per_s"] if best else None,
                "peak_mem_bytes": max((v["peak_mem_bytes"] or 0 for v in done.values()), default=None) or None}

    def precision() -> dict[str, Any]:
        metric = held["metric"]
        x = smooth_images(s.precision_batch, height, width, 3, device)
        return {**precision_check(metric.score, x, metric.span, s, device), "input_size": [height, width]}

    bench.check(f"{name}.load", load)
    for check, fn in (("forward_backward", forward_backward), ("ifgsm", ifgsm), ("batching", batching),
                      ("precision", precision)):
        bench.check(f"{name}.{check}", fn, requires=f"{name}.load")
    held.clear()


def defence_checks(bench: Bench, name: str, folder: Path) -> None:
    from iqadef.core.plugins import installed_plugins

    s, device = bench.settings, bench.device
    sync = synchronizer(device)
    size = s.diffpure_size if name == "diffpure" else s.defence_size
    extra = {"t": s.diffpure_t} if name == "diffpure" else {}
    held: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        cls = installed_plugins().get("defences", name)
        pins = lift_pins(cls)
        t0 = time.perf_counter()
        files = write_defence_checkpoints(name, folder, device, s.quick)
        written = time.perf_counter() - t0
        params, unknown = plugin_params(cls, {**extra, **files})
        t0 = time.perf_counter()
        held["defence"] = cls(**params).load(device)
        sync()
        held["params"] = params
        return {"wall_s": time.perf_counter() - t0, "checkpoint_write_s": written,
                "checkpoint_bytes": sum(Path(p).stat().st_size for k, p in files.items() if k.endswith("path")),
                "params": params, "params_not_declared": unknown, "pins_lifted": pins}

    def purify() -> dict[str, Any]:
        defence = held["defence"]
        x = smooth_images(1, size, size, 4, device)

        def run():
            with torch.no_grad():
                return defence.purify(x, seed=0)
        r = timed(run, repeats=s.repeats, warmup=s.warmup, budget_s=s.check_budget_s, sync=sync)
        out = r.pop("output")
        return {**r, "batch": 1, "input_size": [size, size], "images_per_s": 1 / r["wall_s"],
                "output_finite": bool(torch.isfinite(out).all()), "mean_abs_change": float((out - x).abs().mean())}

    def precision() -> dict[str, Any]:
        defence = held["defence"]
        x = smooth_images(1, size, size, 5, device)
        return {**precision_check(lambda images: defence.purify(images, seed=0), x, None, s, device),
                "input_size": [size, size]}

    def fp16_option() -> dict[str, Any]:
        """DiffPure's own ``fp16: true`` (the UNet's convolutions in half, as the reference runs it)."""
        if device.type != "cuda":
            return {"status": "skipped", "reason": "CUDA only (the plugin ignores fp16 on a CPU)"}
        cls = installed_plugins().get("defences", name)
        half = cls(**{**held["params"], "fp16": True}).load(device)
        x = smooth_images(1, size, size, 5, device)

        def run(defence):
            with torch.no_grad():
                return defence.purify(x, seed=0)
        r16 = timed(lambda: run(half), repeats=s.repeats, warmup=s.warmup, budget_s=s.check_budget_s, sync=sync)
        r32 = timed(lambda: run(held["defence"]), repeats=s.repeats, warmup=s.warmup, budget_s=s.check_budget_s,
                    sync=sync)
        out16, out32 = r16.pop("output"), r32.pop("output")
        return {**r16, "batch": 1, "input_size": [size, size], "images_per_s": 1 / r16["wall_s"],
                "fp32_wall_s": r32["wall_s"], "speedup_vs_fp32": r32["wall_s"] / r16["wall_s"],
                **differences(out16, out32, None)}

    bench.check(f"{name}.load", load)
    bench.check(f"{name}.purify", purify, requires=f"{name}.load")
    bench.check(f"{name}.precision", precision, requires=f"{name}.load")
    if name == "diffpure":
        bench.check(f"{name}.fp16_option", fp16_option, requires=f"{name}.load")
    held.clear()


def denoiser_checkpoint(folder: Path, sigma: float) -> str:
    """A dms-iqa / drs denoiser checkpoint (``iqadef train-dms``'s layout) for ``sigma``, random weights."""
    from iqadef.plugins.certified.dms_iqa import Denoiser

    torch.manual_seed(0)
    net = Denoiser()
    for module in net.net:
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.02)
    path = folder / f"denoiser_{sigma:g}.pt"
    torch.save({"model": net.state_dict(), "sigma": sigma, "width": net.width, "depth": net.depth}, path)
    return str(path)


def certified_checks(bench: Bench, folder: Path) -> None:
    """Every built-in certified defence on tiny-iqa, per image: ms (median smoothing) and dms (dms-iqa) at n 1000,
    rs and drs at the reference's n0 100 + n 1000, ddrs and densepure with the real-size guided-diffusion UNet
    (random weights), a few noisy copies timed and the reference's 1100 per image extrapolated; fs-iqa at n 1024
    (feature noise; its Lipschitz bound timed apart, once per metric)."""
    from iqadef.plugins.certified.ddrs import DiffusionDenoisedSmoothing
    from iqadef.plugins.certified.densepure import DensePure
    from iqadef.plugins.certified.dms_iqa import DMSIQA
    from iqadef.plugins.certified.drs import DenoisedRandomizedSmoothing
    from iqadef.plugins.certified.fs_iqa import FeatureSmoothing
    from iqadef.plugins.certified.median_smoothing import MedianSmoothing
    from iqadef.plugins.certified.rs import RandomizedSmoothing
    from iqadef.plugins.metrics.embedded import TinyIQA

    s, device = bench.settings, bench.device
    sync = synchronizer(device)
    size = s.diffpure_size
    metric = TinyIQA().load(device)

    def smoothed(smoothing: Any, copies: int, reference_copies: int = 1100) -> dict[str, Any]:
        x = smooth_images(1, size, size, 7, device)

        def run():
            with torch.no_grad():
                return smoothing.smooth(metric, x, seed=0)
        r = timed(run, repeats=max(1, s.repeats // 2), warmup=min(1, s.warmup), budget_s=s.check_budget_s, sync=sync)
        out = r.pop("output")
        extra = ({"bin": int(out.bin[0]), "radius": float(out.radius[0])} if out.bin is not None else
                 {"width": float(out.upper[0] - out.lower[0])})
        return {**r, "input_size": [size, size], "noisy_copies": copies, "seconds_per_copy": r["wall_s"] / copies,
                f"seconds_per_image_at_n{reference_copies}": r["wall_s"] / copies * reference_copies, **extra}

    def many(n0: int, n: int) -> tuple[int, int]:
        return (2, 8) if s.quick else (n0, n)

    def ms() -> dict[str, Any]:
        _, n = many(0, 1000)
        return smoothed(MedianSmoothing(n=n, batch=8 if s.quick else 250).load(device), n, 1000)

    def dms() -> dict[str, Any]:
        _, n = many(0, 1000)
        smoothing = DMSIQA(n=n, batch=8 if s.quick else 250, weights_path=denoiser_checkpoint(folder, 0.25))
        return smoothed(smoothing.load(device), n, 1000)

    def rs() -> dict[str, Any]:
        n0, n = many(100, 1000)
        return smoothed(RandomizedSmoothing(n0=n0, n=n, batch=8 if s.quick else 256).load(device), n0 + n)

    def drs() -> dict[str, Any]:
        n0, n = many(100, 1000)
        smoothing = DenoisedRandomizedSmoothing(n0=n0, n=n, batch=8 if s.quick else 256,
                                                weights_path=denoiser_checkpoint(folder, 0.12))
        return smoothed(smoothing.load(device), n0 + n)

    def ddrs() -> dict[str, Any]:
        files = write_defence_checkpoints("diffpure", folder, device, s.quick)
        n0, n = (1, 3) if s.quick else (4, 28)
        smoothing = DiffusionDenoisedSmoothing(n0=n0, n=n, batch=4 if s.quick else 16, **files).load(device)
        return smoothed(smoothing, n0 + n)

    def densepure() -> dict[str, Any]:  # 2 UNet forwards per copy (the reference's num_t_steps), one vote
        files = write_defence_checkpoints("diffpure", folder, device, s.quick)
        n0, n = (1, 3) if s.quick else (2, 14)
        smoothing = DensePure(n0=n0, n=n, batch=4 if s.quick else 16, **files).load(device)
        return smoothed(smoothing, n0 + n)

    def fs_iqa() -> dict[str, Any]:  # the backbone once, n head forwards; the Lipschitz bound once per metric
        _, n = many(0, 1024)
        start = time.perf_counter()
        bound = metric.feature_split((size, size)).lipschitz  # FFT maths on the CPU, cached on the metric
        bound_s = time.perf_counter() - start
        smoothing = FeatureSmoothing(n=n, batch=8 if s.quick else 1024, eps=1e-9).load(device)
        return {**smoothed(smoothing, n, 1024), "lipschitz_bound": bound, "lipschitz_seconds": bound_s}

    for name, check in (("ms", ms), ("dms", dms), ("rs", rs), ("drs", drs), ("ddrs", ddrs),
                        ("densepure", densepure), ("fs-iqa", fs_iqa)):
        bench.check(f"certified.{name}", check)


def protocol_checks(bench: Bench, folder: Path) -> None:
    """The protocol's attacks at real size: seconds per APGD step through DiffPure (EOT 8) and JPEG (BPDA), and
    the Square attack's queries per second (docs/evaluation.md, 'Cost')."""
    from iqadef.core.adaptive import DefendedMetric
    from iqadef.core.plugins import installed_plugins

    s, device = bench.settings, bench.device
    sync = synchronizer(device)
    plugins = installed_plugins()
    held: dict[str, Any] = {}
    size = 32 if s.quick else 224

    def metric():
        if "metric" not in held:
            files = {"weights_path": str(write_metric_checkpoint("spaq", folder, device))}
            params, _ = plugin_params(plugins.get("metrics", "spaq"),
                                      {**files, "resize": None, **({"patch_size": 32, "stride": 32} if s.quick else {})})
            held["metric"] = plugins.get("metrics", "spaq")(**params).load(device)
        return held["metric"]

    def attack_through(defence, samples: int, batch: int, steps: int) -> dict[str, Any]:
        apgd = plugins.get("attacks", "apgd")(eps=8 / 255, norm="linf", steps=steps)
        x = smooth_images(batch, size, size, 8, device)

        def run():
            target = DefendedMetric(metric(), defence, samples=samples, seed=0)
            return apgd.run(target, x, seed=0)
        r = timed(run, repeats=1, warmup=0, budget_s=s.check_budget_s * 4, sync=sync)
        out = r.pop("output")
        return {**r, "batch": batch, "input_size": [size, size], "steps": steps, "eot_samples": samples,
                "seconds_per_step": r["wall_s"] / steps, "linf": float((out - x).abs().max())}

    def apgd_eot_diffpure() -> dict[str, Any]:
        files = write_defence_checkpoints("diffpure", folder, device, s.quick)
        defence = plugins.get("defences", "diffpure")(t=s.diffpure_t, **files).load(device)
        return attack_through(defence, samples=2 if s.quick else 8, batch=1, steps=2 if s.quick else 10)

    def apgd_bpda_jpeg() -> dict[str, Any]:
        defence = plugins.get("defences", "jpeg")().load(device)
        return attack_through(defence, samples=1, batch=2 if s.quick else 7, steps=2 if s.quick else 20)

    def square_queries() -> dict[str, Any]:
        from iqadef.core.query import QueryMetric

        defence = plugins.get("defences", "jpeg")().load(device)
        queries = 10 if s.quick else 200
        square = plugins.get("attacks", "square-attack")(eps=8 / 255, queries=queries)
        batch = 2 if s.quick else 7
        x = smooth_images(batch, size, size, 9, device)

        def run():
            return square.run(QueryMetric(DefendedMetric(metric(), defence, seed=0), x.shape[0]), x, seed=0)
        r = timed(run, repeats=1, warmup=0, budget_s=s.check_budget_s * 4, sync=sync)
        r.pop("output")
        return {**r, "batch": batch, "input_size": [size, size], "queries_per_image": queries,
                "queries_per_s": batch * queries / r["wall_s"]}

    bench.check("protocol.apgd_eot_diffpure", apgd_eot_diffpure)
    bench.check("protocol.apgd_bpda_jpeg", apgd_bpda_jpeg)
    bench.check("protocol.square_queries", square_queries)
    held.clear()


_SUMMARY = re.compile(r"(\d+) cells: (\d+) computed, (\d+) already done, (\d+) failed")


def quick_registry(folder: Path) -> Path:
    """The default registry trimmed to its first attack (2 steps) and first two defences, no examples."""
    import yaml

    data = yaml.safe_load((ROOT / "registry.yaml").read_text())
    first = data["attacks"][0]
    first = {"name": first} if isinstance(first, str) else dict(first)
    data["attacks"] = [{**first, "iters": 2}] if first["name"] in ("ifgsm", "mifgsm", "amifgsm") else [first]
    data["defences"] = data["defences"][:2]
    data["examples"] = 0
    images = data.get("dataset", {}).get("images")
    if isinstance(images, str) and images != "builtin" and not Path(images).is_absolute():
        data["dataset"]["images"] = str((ROOT / images).resolve())
    path = folder / "registry-quick.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def grid_check(bench: Bench, folder: Path) -> None:
    s, device = bench.settings, bench.device

    def run() -> dict[str, Any]:
        registry = quick_registry(folder) if s.quick else ROOT / "registry.yaml"
        output = folder / "run"
        child_json = folder / "grid-child.json"
        argv = ["run", str(registry), "--output", str(output), "--device", str(device), "--fresh"]
        if s.grid_limit:
            argv += ["--limit", str(s.grid_limit)]
        timeout = max(1.0, bench.remaining())
        env = {**os.environ, "IQADEF_OFFLINE": "1"}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--grid-child", str(child_json),
                                   "--", *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired as exc:
            tail = (exc.stdout or b"")[-2000:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            raise TimeoutError(f"the grid did not finish within the {timeout:.0f} s left of the budget "
                               f"(output so far: ...{tail})") from None
        wall = time.perf_counter() - t0
        child = json.loads(child_json.read_text()) if child_json.is_file() else {}
        match = _SUMMARY.search(proc.stdout)
        record: dict[str, Any] = {
            "wall_s": wall, "run_s": child.get("run_s"), "command": "iqadef " + " ".join(argv),
            "returncode": proc.returncode,
            "peak_mem_bytes": child.get("peak_mem_bytes"), "quick_trimmed_registry": s.quick,
        }
        if match:
            cells, computed, _, failed = map(int, match.groups())
            record.update(cells=cells, computed=computed, failed=failed, cells_per_s=cells / wall)
        if proc.returncode != 0 or not match:
            record.update(status="error", error=f"iqadef run exited with {proc.returncode}",
                          stdout_tail=proc.stdout[-2000:], stderr_tail=proc.stderr[-2000:])
        return record

    bench.check("grid", run)


def grid_child(result_path: Path, argv: list[str]) -> int:
    """Runs ``iqadef <argv>`` in this process (so that its CUDA peak memory can be read) and records it."""
    from iqadef.cli import main as iqadef_main

    device = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"), "cpu")
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    t0 = time.perf_counter()
    rc = iqadef_main(argv)
    if cuda:
        torch.cuda.synchronize()
    result_path.write_text(json.dumps({"returncode": rc, "run_s": time.perf_counter() - t0,
                                       "peak_mem_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None}))
    return rc


# ------------------------------------------------------------------------------------------------
def header(settings: Settings, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    import iqadef

    info: dict[str, Any] = {
        "benchmark": "gpu", "quick": settings.quick,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": None, "device_memory_bytes": None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "iqadef": getattr(iqadef, "__version__", None), "git_commit": _git_commit(),
        "tf32": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                 "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn.benchmark": torch.backends.cudnn.benchmark},
        "machine": B.machine(), "settings": dataclasses.asdict(settings), "only": args.only,
        "weights": "random, in the official checkpoint layouts (timings do not depend on the values)",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_bytes=int(props.total_memory),
                    compute_capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = B.machine().get("cpu_model") or "cpu"
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class UsageError(Exception):
    """A wrong option: one line on stderr, exit status 2 (as the iqadef command line)."""


def resolve_device(name: str, quick: bool) -> torch.device:
    """``auto`` is CUDA when present; the full sizes on a CPU (hours) only when asked for by ``--device cpu``."""
    try:
        device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                              "cpu" if name == "auto" else name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu (with --quick)")
    if device.type == "cpu" and not quick and name == "auto":
        raise UsageError("no CUDA device: run `--quick` (a CPU smoke run) "
                         "or force the full sizes with --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--grid-child"]:
        return grid_child(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke run (figures meaningless)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N or cpu")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu-<date>.json)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups of checks")
    parser.add_argument("--repeats", type=int, help="timed runs per check (median reported)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run; later checks are skipped")
    parser.add_argument("--check-budget", type=float, help="seconds per check after which no repeat starts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    settings = Settings.make(args.quick)
    if args.repeats is not None:
        settings.repeats = max(1, args.repeats)
    if args.budget is not None:
        settings.total_budget_s = args.budget
    if args.check_budget is not None:
        settings.check_budget_s = args.check_budget
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, args.quick)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("IQADEF_OFFLINE", "1")  # the GPU machine has no network: fail fast, never hang
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = args.out or HERE / "results" / f"gpu{'-quick' if args.quick else ''}-{date}.json"
    groups = [g for g in GROUPS if not args.only or g in args.only]  # always in the documented order

    bench = Bench(settings, device, out.resolve(), header(settings, device, args))
    print(f"iqadef GPU benchmark on {bench.results['device_name']} ({device}); quick={settings.quick}", flush=True)
    with tempfile.TemporaryDirectory(prefix="iqadef-gpu-") as tmp:
        folder = Path(tmp)
        for name in groups:
            group_folder = folder / name  # each group's checkpoints are deleted once its checks are done
            group_folder.mkdir()
            if name in METRICS:
                metric_checks(bench, name, group_folder)
            elif name in DEFENCES:
                defence_checks(bench, name, group_folder)
            elif name == "certified":
                certified_checks(bench, group_folder)
            elif name == "protocol":
                protocol_checks(bench, group_folder)
            else:
                grid_check(bench, group_folder)
            shutil.rmtree(group_folder, ignore_errors=True)
    bench.save()
    failed = [n for n, r in bench.results["checks"].items() if r["status"] == "error"]
    print(f"{len(bench.results['checks'])} checks, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{bench.elapsed():.0f} s")
    print(out.resolve())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
