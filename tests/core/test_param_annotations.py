"""Plugin parameters are visible to a type checker: each built-in annotates its Params (``eps: float``) and an
annotation that disagrees with its Param stops the class definition."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

import pytest

from iqadef import Attack, Defence, Param
from iqadef.core.contract import Plugin, param_annotation
from iqadef.core.params import annotation_problem, expected_annotation
from iqadef.core.plugins import installed_plugins


def _builtin_plugin_classes() -> list[type]:
    registry = installed_plugins()
    return [
        reg.cls
        for table in registry.by_kind.values()
        for reg in table.values()
        if isinstance(reg.cls, type) and issubclass(reg.cls, Plugin)
    ]


def test_every_builtin_parameter_is_annotated():
    classes = _builtin_plugin_classes()
    assert len(classes) > 60  # the built-ins are there (attacks, defences, metrics, certified, scores)
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{p.name}: add `{p.name}: {expected_annotation(p)}`"
        for cls in classes
        for p in cls.params
        if param_annotation(cls, p.name) is None
    ]
    assert missing == []


def test_a_wrong_annotation_is_one_clear_error():
    with pytest.raises(
        TypeError,
        match=r"WrongStep: parameter 'steps' is annotated 'float' but its Param holds "
        r"int; annotate it `steps: int`",
    ):

        class WrongStep(Attack):
            name = "wrong-step"
            params = (Param("steps", int, 3),)
            steps: float


def test_a_nullable_parameter_needs_none_in_its_annotation():
    with pytest.raises(
        TypeError,
        match=r"parameter 'checkpoint' is annotated 'str' but its Param holds str \| None "
        r"\(a path parameter holds a str\); annotate it `checkpoint: str \| None`",
    ):

        class NoNone(Defence):
            name = "no-none"
            params = (Param("checkpoint", Path, None),)
            checkpoint: str


@pytest.mark.parametrize(
    "param, annotation",
    [
        (Param("eps", float, 0.1), "float"),
        (Param("eps", float, None), "float | None"),
        (Param("eps", float, None), Optional[float]),
        (Param("eps", float, 0.1), float),
        (Param("path", Path, None), "str | None"),
        (Param("sizes", list, None, nullable=True), "list[int] | None"),
        (Param("norm", str, "linf"), ClassVar[Optional[str]]),
        (Param("flag", bool, False), "bool"),
    ],
)
def test_annotations_that_describe_the_value(param, annotation):
    assert annotation_problem(param, annotation) is None


@pytest.mark.parametrize(
    "param, annotation",
    [
        (Param("eps", float, 0.1), "int"),
        (Param("eps", float, None), "float"),
        (Param("path", Path, None), "Path | None"),
        (Param("n", int, 1), "int | str"),
        (Param("flag", bool, False), "int"),
    ],
)
def test_annotations_that_do_not(param, annotation):
    assert annotation_problem(param, annotation) is not None


def test_an_unannotated_third_party_plugin_still_works():
    class Plain(Defence):
        name = "plain"
        params = (Param("strength", float, 0.5),)

    assert Plain(strength=0.25).strength == 0.25


def test_the_annotation_is_what_the_instance_holds():
    class Typed(Defence):
        name = "typed"
        params = (Param("checkpoint", Path, None), Param("quality", int, 50))
        checkpoint: str | None
        quality: int

    plugin = Typed(checkpoint="~/w.pth", quality=10.0)
    assert isinstance(plugin.checkpoint, str) and plugin.checkpoint.endswith("w.pth") and "~" not in plugin.checkpoint
    assert plugin.quality == 10 and isinstance(plugin.quality, int)
