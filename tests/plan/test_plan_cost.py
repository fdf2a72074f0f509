"""``iqadef plan``'s cost counts: the attacks' own work (black-box queries, APGD restarts, EOT draws)."""

from __future__ import annotations

from iqadef.config.registry import parse_run_config
from iqadef.plan.grid import attack_work, plan_units, plugin_calls


def _config(tmp_path, image_dir, attacks):
    data = {
        "dataset": {"images": str(image_dir)},
        "output": str(tmp_path / "run"),
        "device": "cpu",
        "batch_size": 2,
        "metrics": ["tiny-iqa"],
        "attacks": attacks,
        "defences": ["no-defence", "jpeg"],
    }
    return parse_run_config(data, tmp_path / "registry.yaml")


def test_plan_counts_queries_restarts_and_eot_draws(tmp_path, image_dir):
    cfg = _config(
        tmp_path,
        image_dir,
        [
            {"name": "square-attack", "queries": 50},
            {"name": "apgd", "steps": 5, "restarts": 3},
            {"name": "pgd-linf", "steps": 2, "adaptive": "eot", "eot_samples": 4},
            {"name": "onepixel", "pixels": 1, "iters": 2, "popsize": 10},
        ],
    )
    square, apgd, eot, onepixel = cfg.attacks
    assert attack_work(square) == (0, 50)
    assert attack_work(apgd) == (15, 0)  # every restart runs all its steps
    assert attack_work(eot) == (8, 0)  # each step averages four draws
    assert attack_work(onepixel) == (0, 3 * 10)  # a population of 10 (5 dimensions x 2) per generation and the first

    dataset = cfg.open_dataset()
    calls = plugin_calls(cfg, dataset, plan_units(cfg, dataset, set()))
    images, defences = 6, 2
    # the EOT attack is adaptive: it runs once per defence
    assert calls["attack_runs"] == images * (1 + 1 + defences + 1)
    assert calls["attack_steps"] == images * (15 + 8 * defences)
    assert calls["attack_queries"] == images * (50 + 30)
    # f(x), f(D(x)) once per image; per run f(x_a) and its queries; f(D(x_a)) per defence and attack
    runs = 1 + 1 + defences + 1
    assert calls["metric_scores"] == images * (1 + defences) + images * (runs + 50 + 30 + 4 * defences)
