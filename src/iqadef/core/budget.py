"""Equal budgets: an attack entry asks for a size of x_a instead of its native strength parameter.

``{name: korhonen, budget: {linf: 8/255}}`` runs Korhonen et al. at the learning rate that lands each image's
x_a at an L-inf of 8/255 (within 5%), so that attacks are compared at equal visibility, as the benchmark of
Gushchin et al. (ICML 2025) compares them (``metrics/methods/utils/picked_presets_v1.csv`` of
adversarial-defenses-for-iqa: per metric and attack, the native value that lands it at L-inf ~2, 4, 8, 16/255).
The native parameter is the one the benchmark sweeps (the parameter with ``presets``); a short bisection over
it, on a log scale between a tenth of its smallest preset and ten times its largest, runs the attack on the
image until the achieved size (measured on x_a rounded to 8 bits, as the run stores it) is within 5% of the
target. The value found for each image is in the result table (``native_value``).
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch

from iqadef.core.base import Attack, Metric
from iqadef.core.contract import _fmt
from iqadef.core.errors import ConfigError
from iqadef.core.params import Param
from iqadef.core.query import QueryMetric

#: The sizes a budget can name: (measure of x vs x_a, whether a larger value is a stronger attack).
BUDGET_NORMS = {"linf": "largest absolute pixel difference (pixels in [0, 1])", "psnr": "PSNR in dB, data range 1"}
#: How close the achieved size must come to the target (relative).
TOLERANCE = 0.05
#: Attack runs per image at most.
MAX_STEPS = 24


def strength_param(cls: type[Attack], where: str) -> Param:
    """The parameter the benchmark sweeps for ``cls`` (the one with presets): what a budget search sets."""
    swept = [p for p in cls.params if p.presets and p.type in (int, float)]
    if len(swept) != 1:
        raise ConfigError(
            f"{where}.budget: attack {cls.name!r} has no single swept parameter (one with presets) "
            f"to search; give its parameters instead of a budget"
        )
    return swept[0]


def parse_budget(value: Any, cls: type[Attack], where: str) -> tuple[str, float]:
    """``{linf: 8/255}`` or ``{psnr: 40}`` -> (norm, target), or a ConfigError naming the key."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{where}.budget: must be a mapping with one key, e.g. {{linf: 8/255}} or {{psnr: 40}}")
    ((norm, target),) = value.items()
    if norm not in BUDGET_NORMS:
        raise ConfigError(f"{where}.budget.{norm}: unknown size; one of {', '.join(BUDGET_NORMS)}")
    high = 1.0 if norm == "linf" else None
    target = Param(norm, float, None, low=0.0, high=high).validate(target, f"{where}.budget.{norm}")
    if target is None or target <= 0:
        raise ConfigError(f"{where}.budget.{norm}: must be a number > 0")
    strength_param(cls, where)
    return norm, float(target)


def achieved(norm: str, clean: torch.Tensor, adv: torch.Tensor) -> float:
    """The size of ``adv - clean`` (one image) with ``adv`` rounded to 8 bits, as the run stores it."""
    stored = torch.round(adv.detach().clamp(0, 1) * 255.0) / 255.0
    diff = (stored.double() - clean.detach().double()).flatten()
    if norm == "linf":
        return float(diff.abs().max())
    mse = float(diff.square().mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


class BudgetedAttack(Attack):
    """An attack whose strength parameter is searched per image to land x_a at a size (see the module)."""

    def __init__(self, inner: Attack, norm: str, target: float, where: str | None = None):
        super().__init__(where)
        self.inner, self.budget_norm, self.target = inner, norm, target
        self.param = strength_param(type(inner), where or inner.name)
        self.name = inner.name  # type: ignore[misc]
        self.version = inner.version  # type: ignore[misc]
        self.norm = inner.norm  # type: ignore[misc]
        self.black_box = inner.black_box  # type: ignore[misc]
        fixed = {k: v for k, v in inner.config.items() if k != self.param.name}
        self.config = {**fixed, "budget": {norm: target}}
        #: The native value chosen for each image of the last :meth:`run` (the runner's ``native_value`` column).
        self.chosen_values: list[float] = []
        self._found: dict[str, float] = {}  # image content, metric, seed -> chosen value

    @property
    def label(self) -> str:
        changed = [
            f"{p.name}={_fmt(self.inner.config[p.name])}"
            for p in self.inner.params
            if p.name != self.param.name and self.inner.config[p.name] != p.default
        ]
        return f"{self.name}[{','.join(changed + [f'budget_{self.budget_norm}={_fmt(self.target)}'])}]"

    def identity(self) -> dict[str, Any]:
        ident = self.inner.identity()
        ident["params"] = {k: v for k, v in ident["params"].items() if k != self.param.name}
        ident["budget"] = {
            "norm": self.budget_norm,
            "target": float(f"{self.target:.12g}"),
            "param": self.param.name,
            "tolerance": TOLERANCE,
        }
        return ident

    def weights_in_use(self) -> tuple:
        return self.inner.weights_in_use()

    def setup(self, device: torch.device) -> None:
        self.inner.load(device)

    def bound(self) -> float | None:
        return self.target if self.budget_norm == "linf" and self.norm == "linf" else self.inner.bound()

    def _attack_with(self, value: float, metric: Metric, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The inner attack at ``value`` (a shallow copy: loaded networks are shared, nothing reloaded)."""
        attack = copy.copy(self.inner)
        attack.config = {**self.inner.config, self.param.name: value}
        setattr(attack, self.param.name, value)
        return attack.run(metric, image.clone(), seed=seed)

    def _search_range(self) -> tuple[float, float]:
        p = self.param
        lo, hi = min(p.presets) / 10.0, max(p.presets) * 10.0
        if p.low is not None:
            lo = max(lo, p.low) if p.low > 0 else lo
        if p.high is not None:
            hi = min(hi, p.high)
        if p.type is int:
            lo, hi = max(1, math.floor(lo)), max(1, math.ceil(hi))
        return lo, hi

    def search(self, metric: Metric, image: torch.Tensor, seed: int) -> tuple[float, torch.Tensor]:
        """The native value and x_a for one image ``[1, 3, H, W]`` (bisection on a log scale)."""
        key = hashlib.sha256(
            repr((metric.key(), self.key(), seed)).encode() + image.detach().cpu().numpy().tobytes()
        ).hexdigest()
        if key in self._found:  # searched before in this process: one run at the value found
            value = self._found[key]
            return value, self._attack_with(value, metric, image, seed)
        stronger_is_larger = self.budget_norm == "linf"
        lo, hi = self._search_range()
        tried: list[tuple[float, float]] = []
        for _ in range(MAX_STEPS):
            if self.param.type is int:
                if hi - lo <= 1 and tried:
                    break
                value: float = (lo + hi) // 2 if tried else round(math.sqrt(lo * hi))
            else:
                value = math.sqrt(lo * hi)
            adv = self._attack_with(value, metric, image, seed)
            size = achieved(self.budget_norm, image[0], adv[0])
            tried.append((value, size))
            if abs(size - self.target) <= TOLERANCE * self.target:
                self._found[key] = value
                return value, adv
            too_weak = size < self.target if stronger_is_larger else size > self.target
            if too_weak:
                lo = value
            else:
                hi = value
        closest = min(tried, key=lambda t: abs(t[1] - self.target))
        raise RuntimeError(
            f"budget {self.budget_norm}={_fmt(self.target)}: no value of {self.param.name} lands this image within "
            f"{TOLERANCE:.0%} (closest: {self.param.name}={_fmt(closest[0])} gives {_fmt(closest[1])}); the attack's "
            f"other parameters may cap it (e.g. its eps)"
        )

    def run(self, metric: Metric, images: torch.Tensor, *, seed: int = 0) -> torch.Tensor:

        out, chosen = [], []
        for i in range(images.shape[0]):
            # A black-box attack's oracle counts per image of the batch: each image gets its own, added back.
            oracle = QueryMetric(metric._target, 1) if isinstance(metric, QueryMetric) else metric
            value, adv = self.search(oracle, images[i : i + 1], (int(seed) + i) % (2**63))
            if oracle is not metric:
                metric.queries[i] += oracle.queries[0]
            out.append(adv)
            chosen.append(float(value))
        self.chosen_values = chosen
        return torch.cat(out)
