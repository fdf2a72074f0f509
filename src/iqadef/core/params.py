"""Typed plugin parameters: declared once on the plugin class, validated before any work starts.

A parameter knows its type, default, allowed range or choices, and the preset values the reference
study sweeps (so a registry can ask for ``quality: presets``). Validation errors name the key path
(``defences[2].quality``) and what is allowed, and are :class:`~iqadef.core.errors.ConfigError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from iqadef.core.errors import ConfigError
from iqadef.core.suggest import did_you_mean

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
#: A plain decimal number written as a string (``"1e9"``, ``"0.5"``, ``".5"``); not ``inf``/``nan``.
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$")

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", Path: "path", list: "list"}


@dataclass(frozen=True)
class Param:
    """One parameter of a plugin.

    ``type`` is one of int, float, bool, str, Path or list (a list of floats/ints/strs as given).
    ``low``/``high`` bound numbers (inclusive); ``choices`` restricts values; ``nullable`` allows
    ``None`` (implied when the default is None). ``presets`` are the values the reference sweeps.
    Floats also accept numbers and fractions written as strings, e.g. ``"1e9"``, ``"10/255"``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    presets: tuple = ()
    nullable: bool = False

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, self.type.__name__)

    @property
    def allows_none(self) -> bool:
        return self.nullable or self.default is None

    def allowed(self) -> str:
        """Human description of the allowed values, used in error messages and ``iqadef list``."""
        parts = [self.type_name]
        if self.choices is not None:
            parts = ["one of " + ", ".join(repr(c) for c in self.choices)]
        if self.low is not None and self.high is not None:
            parts.append(f"in [{self.low}, {self.high}]")
        elif self.low is not None:
            parts.append(f">= {self.low}")
        elif self.high is not None:
            parts.append(f"<= {self.high}")
        if self.allows_none:
            parts.append("or null")
        return " ".join(parts)

    def validate(self, value: Any, where: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ConfigError naming ``where``."""
        if value is None:
            if self.allows_none:
                return None
            raise ConfigError(f"{where}: null is not allowed; expected {self.allowed()}")
        converted = self._convert(value, where)
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not allowed; expected {self.allowed()}")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if self.low is not None and converted < self.low:
                raise ConfigError(f"{where}: {value!r} is too small; expected {self.allowed()}")
            if self.high is not None and converted > self.high:
                raise ConfigError(f"{where}: {value!r} is too large; expected {self.allowed()}")
        return converted

    def _convert(self, value: Any, where: str) -> Any:
        bad = ConfigError(
            f"{where}: {value!r} ({type(value).__name__}) is not a valid {self.type_name}; expected {self.allowed()}"
        )
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                return value
            raise bad
        if t is int:
            if isinstance(value, bool):
                raise bad
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        if t is float:
            if isinstance(value, bool):
                raise bad
            if isinstance(value, (int, float)):
                out = float(value)
            elif isinstance(value, str) and (m := _FRACTION.match(value)):
                den = float(m.group(2))
                if den == 0:
                    raise bad
                out = float(m.group(1)) / den
            elif isinstance(value, str) and _NUMBER.match(value):
                out = float(value)  # '1e9': YAML 1.1 reads an exponent without a dot as a string
            else:
                raise bad
            if not math.isfinite(out):
                raise bad
            return out
        if t is str:
            if isinstance(value, str):
                return value
            raise bad
        if t is Path:
            if isinstance(value, (str, Path)) and str(value):
                return str(Path(value).expanduser())
            raise bad
        if t is list:
            if isinstance(value, (list, tuple)):
                return list(value)
            raise bad
        raise bad


#: What a parameter's value is on the plugin, by its Param's type (a path is held as a string, ``~`` expanded).
_HELD_AS = {int: "int", float: "float", bool: "bool", str: "str", Path: "str", list: "list"}
#: Spellings of the held types an annotation may use.
_SPELLINGS = {"list": {"list", "List"}, "str": {"str"}}


def expected_annotation(param: Param) -> str:
    """The annotation a plugin class gives ``param`` so a type checker knows its value: ``eps: float``,
    ``weights: str | None`` (a nullable or None-default parameter, a path)."""
    held = _HELD_AS.get(param.type, param.type.__name__)
    return f"{held} | None" if param.allows_none else held


def annotation_problem(param: Param, annotation: Any) -> str | None:
    """Why ``annotation`` (a class annotation, a string under ``from __future__ import annotations``) does not
    describe ``param``'s value, or None when it does. Read as text: ``float``, ``float | None``,
    ``Optional[float]``, ``list[float]``, ``ClassVar[str | None]`` (a contract's class attribute the parameter
    sets per instance, ``Attack.norm``). ``| None`` is needed where the Param allows None, allowed elsewhere."""
    shown = (
        annotation
        if isinstance(annotation, str)
        else annotation.__name__
        if isinstance(annotation, type)
        else str(annotation)
    )
    text = re.sub(r"\b(typing|pathlib|builtins)\.", "", shown.replace(" ", ""))
    text = re.sub(r"^ClassVar\[(.+)\]$", r"\1", text)  # a contract's class default a parameter overrides
    optional = re.fullmatch(r"Optional\[(.+)\]", text)
    parts = [optional.group(1), "None"] if optional else _top_level_split(text)
    nullable = "None" in parts
    named = [re.sub(r"\[.*\]$", "", t) for t in parts if t != "None"]
    held = _HELD_AS.get(param.type, param.type.__name__)
    if len(named) != 1 or named[0] not in _SPELLINGS.get(held, {held}) or (param.allows_none and not nullable):
        why = " (a path parameter holds a str)" if param.type is Path else ""
        return (
            f"parameter {param.name!r} is annotated {shown!r} but its Param holds {expected_annotation(param)}"
            f"{why}; annotate it `{param.name}: {expected_annotation(param)}`"
        )
    return None


def _top_level_split(text: str) -> list[str]:
    """``a|b[c|d]`` -> ``["a", "b[c|d]"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


#: Names an attack's parameter is also known by: the built-ins say ``iters`` (``iterations`` in the Zhang et al.
#: attacks, ``steps`` in PGD) and ``alpha`` (``step_size`` in PGD); torchattacks writes ``eps``, ``alpha``,
#: ``steps``. A name of a group stands for the member the attack declares (its one canonical name, which is
#: what labels, cache keys and stored rows use). Attacks only: elsewhere ``alpha`` is a confidence level.
ATTACK_ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"iters", "steps", "iterations"}),
    frozenset({"alpha", "step_size"}),
)


def canonical_name(key: Any, declared: Iterable[str], aliases: Iterable[frozenset[str]] = ()) -> Any:
    """``key``, or the declared parameter it is an alias of (one declared member of its alias group)."""
    declared = set(declared)
    if key in declared:
        return key
    for group in aliases:
        if key in group:
            members = sorted(group & declared)
            if len(members) == 1:
                return members[0]
    return key


def canonical_params(
    given: dict[str, Any], declared: Iterable[str], aliases: Iterable[frozenset[str]], where: str
) -> dict[str, Any]:
    """``given`` with aliases replaced by the declared names; one parameter given twice is refused."""
    declared, aliases = set(declared), tuple(aliases)
    out: dict[str, Any] = {}
    written: dict[str, Any] = {}
    for key, value in given.items():
        name = canonical_name(key, declared, aliases)
        if name in out:
            raise ConfigError(
                f"{where}.{key}: {written[name]!r} and {key!r} are the same parameter ({name!r}); give it once"
            )
        out[name], written[name] = value, key
    return out


def pixel_fraction(value: float) -> str | None:
    """``"4/255"`` for a float that is k/255 to rounding (the study's pixel steps, as a registry writes them:
    ``eps: 4/255``); None otherwise (``0.0156863`` typed as a decimal is not k/255 to 1e-9)."""
    if not math.isfinite(value) or value.is_integer():
        return None
    steps = value * 255
    if round(steps) != 0 and abs(steps - round(steps)) < 1e-9 * max(1.0, abs(steps)):
        return f"{round(steps)}/255"
    return None


def resolve(
    params: Iterable[Param], given: dict[str, Any], where: str, aliases: Iterable[frozenset[str]] = ()
) -> dict[str, Any]:
    """Validate ``given`` against ``params``; fill defaults; refuse unknown keys with a did-you-mean.
    ``aliases``: groups of names that stand for the one declared (:data:`ATTACK_ALIASES`)."""
    declared = {p.name: p for p in params}
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: parameters must be a mapping of name: value, got {type(given).__name__}")
    given = canonical_params(given, declared, aliases, where)
    unknown = [k for k in given if k not in declared]
    if unknown:
        key = unknown[0]
        allowed = ", ".join(declared) or "(this plugin takes no parameters)"
        raise ConfigError(f"{where}.{key}: unknown parameter{did_you_mean(str(key), declared)}; allowed: {allowed}")
    out = {}
    for name, p in declared.items():
        out[name] = p.validate(given[name], f"{where}.{name}") if name in given else p.default
    return out
