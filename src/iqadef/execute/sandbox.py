"""Calling a plugin inside a run: its inputs sealed, its output checked against its contract, its errors
turned into failed cells.

Every plugin method a unit calls goes through :meth:`Sandbox.call`: whatever it raises (any
``BaseException`` but ``KeyboardInterrupt``: a plugin's ``sys.exit()`` too) becomes a
:class:`~iqadef.core.guard.CellFailure` naming the plugin, and the tensors handed to it are sealed
(:mod:`iqadef.core.guard`): a write into one fails the cells and sets :attr:`Sandbox.tainted`, so the
caller rebuilds its shared tensors before the next cells. The output checks (a metric: exactly B real
numbers; a per-image score: B numbers per column, no reserved or duplicate names) live here too; the
images' check is :func:`iqadef.core.guard.check_images`. docs/reliability.md lists the whole contract.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from iqadef.core.base import Metric
from iqadef.core.cells import CellBatch
from iqadef.core.guard import CellFailure, InputModified, Seal, broken, modified_message
from iqadef.store.results import CELL_COLUMNS

#: Column names a per-image score may not use (they are the table's own columns).
RESERVED_COLUMNS = frozenset(CELL_COLUMNS) | {"checksum"}


def check_scores(out: Any, n: int, who: str) -> torch.Tensor:
    """A metric's output: exactly ``n`` real numbers, shape ``[n]`` (``[n, 1]`` accepted), as a float copy.

    The copy keeps the scores safe from a metric that reuses its output buffer on the next call."""
    if not isinstance(out, torch.Tensor):
        raise CellFailure(f"{who} returned {type(out).__name__}, expected a tensor of {n} scores (shape [{n}])")
    if tuple(out.shape) not in ((n,), (n, 1)):
        raise CellFailure(
            f"{who} returned shape {list(out.shape)}, expected [{n}]: one score per image ([{n}, 1] is accepted)"
        )
    if out.is_complex() or out.dtype == torch.bool:
        raise CellFailure(f"{who} returned {out.dtype} scores, expected real numbers")
    return out.detach().float().reshape(-1).clone()


def check_score_values(values: Any, n: int, who: str) -> dict[str, torch.Tensor]:
    """An ImageScore's output: a mapping of column name -> ``n`` numbers (a ``[n]`` tensor, a list of floats)."""
    if not isinstance(values, Mapping):
        raise CellFailure(f"{who} returned {type(values).__name__}, expected a dict of column name -> {n} values")
    out: dict[str, torch.Tensor] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise CellFailure(f"{who} returned the column name {name!r}, expected a non-empty string")
        if name in RESERVED_COLUMNS:
            raise CellFailure(f"{who} returned a column named {name!r}, which the result table uses itself; rename it")
        try:
            tensor = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value.detach()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CellFailure(
                f"{who} returned {type(value).__name__} for {name!r}, expected {n} numbers ({describe_exc(exc)})"
            ) from None
        if tuple(tensor.shape) not in ((n,), (n, 1)) and not (n == 1 and tensor.dim() == 0):
            raise CellFailure(
                f"{who} returned shape {list(tensor.shape)} for {name!r}, expected {n} value(s), "
                f"one per image (shape [{n}])"
            )
        if tensor.is_complex():
            raise CellFailure(f"{who} returned complex values for {name!r}, expected real numbers")
        out[name] = tensor.float().reshape(-1).cpu().clone()
    return out


def describe_exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Sandbox:
    """Runs plugin methods for one worker (one thread). ``guard_inputs=False`` turns the seals off (the
    benchmark's baseline only)."""

    def __init__(self, device: torch.device, *, guard_inputs: bool = True):
        self.device = device
        self.guard_inputs = guard_inputs
        #: The plugin call running now (None between calls) and the last one: named when a unit times out.
        self.activity: str | None = None
        self.last_activity: str | None = None
        #: A plugin wrote into a shared tensor: the caller rebuilds its shared tensors before the next cells.
        self.tainted = False

    def seal(self, tensor: torch.Tensor, name: str) -> Seal | None:
        """A seal on ``tensor`` (None when the guard is off); ``name`` is what a broken seal's message says."""
        return Seal(tensor, name) if self.guard_inputs else None

    def call(
        self, who: str, method: str, call: Callable[[], Any], seals: Sequence[Seal | None] = (), deep: bool = True
    ) -> Any:
        """``call()`` (one plugin method); its exceptions and writes into ``seals`` become a CellFailure."""
        self.activity = self.last_activity = f"{who} ({method})"
        error: BaseException | None = None
        out = None
        try:
            out = call()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit or any other escape fails the plugin's cells
            error = exc
        finally:
            self.activity = None
        bad = broken([s for s in seals if s is not None], deep) if self.guard_inputs else None
        if bad is not None:
            self.tainted = True
            raise InputModified(modified_message(who, bad.name)) from error
        if isinstance(error, CellFailure):
            raise error
        if error is not None:
            raise CellFailure(f"{who} raised {describe_exc(error)}") from error
        return out

    def load(self, who: str, plugin: Any) -> Any:
        """``plugin.load(device)``: a plugin's setup fails its cells like any other call."""
        return self.call(who, "setup", lambda: plugin.load(self.device))

    def score(self, metric: Metric, images: torch.Tensor, seal: Seal | None, deep: bool = True) -> torch.Tensor:
        """``metric.score(images)`` without gradients, checked: ``[B]`` real numbers (a float copy)."""
        who = f"metric {metric.label!r}"
        with torch.no_grad():
            out = self.call(who, "score", lambda: metric.score(images), [seal], deep)
        return check_scores(out, images.shape[0], who)

    def image_scores(
        self, scores: Sequence[Any], cells: CellBatch, seals: list[Seal | None], deep: bool
    ) -> dict[str, torch.Tensor]:
        """Every per-image score plugin of ``scores`` on ``cells``: their columns, checked, none twice."""
        out: dict[str, torch.Tensor] = {}
        owner: dict[str, str] = {}
        for score in scores:
            who = f"score {score.name!r}"
            values = self.call(who, "compute", lambda: score.compute(cells), seals, deep)
            changed = cells.changed_measures() if self.guard_inputs else []
            if changed:
                self.tainted = True
                raise InputModified(modified_message(who, f"the shared pair measure {changed[0]!r}"))
            for name, value in check_score_values(values, len(cells), who).items():
                if name in owner:
                    raise CellFailure(
                        f"{who} returned the column {name!r}, which score {owner[name]!r} returns "
                        f"too; one of them must rename it"
                    )
                out[name], owner[name] = value, score.name
        return out


__all__ = ["RESERVED_COLUMNS", "Sandbox", "check_score_values", "check_scores", "describe_exc"]
