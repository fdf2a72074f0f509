"""benchmarks/gpu.sh and gpu.py: the quick mode runs on CPU and records every check; the helpers that keep
checks isolated and bounded in time do so.

No timing assertions (a quick run's figures on tiny inputs mean nothing, and speed is measured in
benchmarks/, not in tests): only that every check ran or says why not, with finite numbers of the right kind.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from repo_paths import REPO_ROOT
from torch import nn

ROOT = REPO_ROOT
SCRIPT = ROOT / "benchmarks" / "gpu.sh"

METRIC_CHECKS = [
    f"{m}.{c}"
    for m in ("linearity", "spaq", "metaiqa")
    for c in ("load", "forward_backward", "ifgsm", "batching", "precision")
]
DEFENCE_CHECKS = [
    "diffpure.load",
    "diffpure.purify",
    "diffpure.precision",
    "diffpure.fp16_option",
    "mprnet.load",
    "mprnet.purify",
    "mprnet.precision",
    "realesrgan.load",
    "realesrgan.purify",
    "realesrgan.precision",
]
CERTIFIED_CHECKS = [f"certified.{m}" for m in ("ms", "dms", "rs", "drs", "ddrs", "densepure", "fs-iqa")]
EXPECTED_CHECKS = (
    METRIC_CHECKS
    + DEFENCE_CHECKS
    + CERTIFIED_CHECKS
    + ["protocol.apgd_eot_diffpure", "protocol.apgd_bpda_jpeg", "protocol.square_queries", "grid"]
)
CUDA_ONLY = {"diffpure.fp16_option"}


def _gpu_module():
    spec = importlib.util.spec_from_file_location("iqadef_bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu = _gpu_module()


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class FakeClock:
    """Each call to ``fn`` advances it by ``step`` seconds: budgets without sleeping."""

    def __init__(self, step: float):
        self.now, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        return self.now

    def fn(self):
        self.calls += 1
        self.now += self.step
        return self.calls


def test_timed_stops_starting_repeats_once_the_budget_is_used():
    clock = FakeClock(step=4.0)
    r = gpu.timed(clock.fn, repeats=10, warmup=1, budget_s=10.0, clock=clock)
    # warm-up ends at 4 s; repeats start at 4 and 8 s, none at 12 s
    assert clock.calls == 3 and r["repeats_done"] == 2 and r["budget_exceeded"]
    assert r["wall_s"] == 4.0 and r["warmup_s"] == [4.0] and not r["from_warmup"] and r["output"] == 3


def test_timed_without_budget_pressure_runs_every_repeat_and_reports_the_median():
    clock = FakeClock(step=1.0)
    r = gpu.timed(clock.fn, repeats=5, warmup=2, budget_s=100.0, clock=clock)
    assert clock.calls == 7 and r["repeats_done"] == 5 and not r["budget_exceeded"] and r["wall_s"] == 1.0


def test_timed_uses_the_warmup_when_it_alone_exceeded_the_budget():
    clock = FakeClock(step=50.0)
    r = gpu.timed(clock.fn, repeats=5, warmup=2, budget_s=10.0, clock=clock)
    assert clock.calls == 1 and r["from_warmup"] and r["repeats_done"] == 0 and r["wall_s"] == 50.0


def _bench(tmp_path, total_budget_s=100.0):
    settings = gpu.Settings.make(quick=True)
    settings.total_budget_s = total_budget_s
    return gpu.Bench(settings, torch.device("cpu"), tmp_path / "out.json", {"benchmark": "test"})


def test_a_failing_check_is_recorded_and_the_next_one_runs(tmp_path):
    bench = _bench(tmp_path)

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    assert bench.check("a.load", broken) is False
    assert bench.check("a.forward", lambda: {"wall_s": 1.0}, requires="a.load") is False
    assert bench.check("b.forward", lambda: {"wall_s": 2.0, "output": torch.zeros(1)}) is True
    saved = json.loads((tmp_path / "out.json").read_text())["checks"]  # rewritten after every check
    assert saved["a.load"]["status"] == "error"
    assert saved["a.load"]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "broken" in saved["a.load"]["traceback"]
    assert saved["a.forward"] == {"status": "error", "error": "not run: a.load did not succeed"}
    assert saved["b.forward"]["status"] == "ok" and saved["b.forward"]["wall_s"] == 2.0
    assert "output" not in saved["b.forward"]


def test_checks_after_the_total_budget_are_skipped(tmp_path):
    bench = _bench(tmp_path, total_budget_s=0.0)
    ran = []
    assert bench.check("late", lambda: ran.append(1) or {"wall_s": 1.0}) is False
    assert not ran and bench.results["checks"]["late"]["status"] == "skipped"


def test_non_finite_numbers_are_written_as_null(tmp_path):
    bench = _bench(tmp_path)
    bench.check("nan", lambda: {"wall_s": 1.0, "max_abs_diff": float("nan"), "x": [float("inf"), 1.0]})
    saved = json.loads((tmp_path / "out.json").read_text())["checks"]["nan"]  # strict JSON parses
    assert saved["max_abs_diff"] is None and saved["x"] == [None, 1.0]


def test_random_state_has_the_layout_and_tame_values():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.PReLU(), nn.Linear(64, 512))
    state = gpu.random_state(model, seed=0, device=torch.device("cpu"))
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(not v.is_meta and torch.isfinite(v.float()).all() for v in state.values())
    assert state["1.num_batches_tracked"].dtype == torch.long
    assert float(state["1.running_var"].min()) >= 0.5 and float(state["2.weight"]) == 0.25
    assert float(state["0.weight"].std()) == pytest.approx(1 / math.sqrt(27), rel=0.1)
    assert float(state["3.weight"].std()) == pytest.approx(1 / math.sqrt(64), rel=0.1)


def test_full_sizes_on_a_machine_without_cuda_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu.UsageError, match="no CUDA device: run `--quick`"):
        gpu.resolve_device("auto", quick=False)
    with pytest.raises(gpu.UsageError, match="CUDA is not available"):
        gpu.resolve_device("cuda", quick=False)
    assert gpu.resolve_device("auto", quick=True) == torch.device("cpu")
    assert gpu.resolve_device("cpu", quick=False) == torch.device("cpu")


def test_a_wrong_device_is_one_line_and_exit_status_2(capsys, tmp_path):
    assert gpu.main(["--quick", "--device", "gpu9", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --device gpu9: not a device; expected auto, cpu, cuda or cuda:N\n"
    assert not (tmp_path / "x.json").exists()


def test_the_quick_grid_is_the_default_registry_trimmed(tmp_path):
    import yaml

    default = yaml.safe_load((ROOT / "registry.yaml").read_text())
    quick = yaml.safe_load(gpu.quick_registry(tmp_path).read_text())
    assert quick["metrics"] == default["metrics"] and quick["dataset"] == default["dataset"]
    assert len(quick["attacks"]) == 1 and quick["defences"] == default["defences"][:2] and quick["examples"] == 0


@pytest.mark.slow
def test_quick_mode_on_cpu_records_every_check(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())  # the JSON path, printed last
    results = json.loads(out.read_text())

    assert results["quick"] is True and results["device"] == "cpu" and results["device_name"]
    assert results["torch"] == torch.__version__ and "cuda" in results and "tf32" in results
    checks = results["checks"]
    assert list(checks) == EXPECTED_CHECKS
    for name, record in checks.items():
        if name in CUDA_ONLY:
            assert record["status"] == "skipped" and "CUDA only" in record["reason"], record
            continue
        assert record["status"] == "ok", (name, record.get("error"), record.get("traceback"))
        assert _positive(record["wall_s"]), name

    for metric in ("linearity", "spaq", "metaiqa"):
        load = checks[f"{metric}.load"]
        assert load["checkpoint_bytes"] > 0 and load["params"]["weights_path"]
        fb = checks[f"{metric}.forward_backward"]
        assert _positive(fb["images_per_s"]) and fb["grad_finite"] and fb["grad_abs_mean"] > 0
        attack = checks[f"{metric}.ifgsm"]
        assert 0 < attack["linf"] <= 10 / 255 + 1e-6 and math.isfinite(attack["score_gain_mean"])
        batching = checks[f"{metric}.batching"]["by_batch"]
        assert set(batching) == {"1", "2"} and all(_positive(v["images_per_s"]) for v in batching.values())
        variants = checks[f"{metric}.precision"]["variants"]
        assert variants["fp32"]["max_abs_diff"] == 0.0 and variants["bf16"]["finite"]
        assert math.isfinite(variants["bf16"]["max_abs_diff_over_range"])
    for defence in ("diffpure", "mprnet", "realesrgan"):
        purified = checks[f"{defence}.purify"]
        assert purified["output_finite"] and _positive(purified["images_per_s"])
        assert checks[f"{defence}.precision"]["variants"]["bf16"]["status"] == "ok"
    assert checks["realesrgan.load"]["params"]["wdn_weights_path"]

    grid = checks["grid"]
    assert grid["returncode"] == 0 and grid["cells"] == grid["computed"] == 2 and grid["failed"] == 0
