"""Keyword arguments renamed in the public API: the old keyword keeps working, with a DeprecationWarning.

A leaf (standard library only), so that every layer, down to ``core.dataset``, can mark its renamed keywords
the same way. The renames so far: ``registry=`` (the plugin manager, before "registry" came to mean only the
registry file) is now ``plugins=``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def renamed_keyword(old: str, new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let ``func`` take ``old=`` for its parameter ``new`` (warning that the keyword is now ``new``).

    Positional calls are untouched; ``old=`` together with ``new=`` is a TypeError, as for any argument
    given twice."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        name = getattr(func, "__qualname__", repr(func))

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and {new}=; give only {new}= ({old}= is its old name)")
                warnings.warn(
                    f"{name}(): the keyword {old}= is now {new}=; pass {new}= instead",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorate


#: Marks a public function whose plugin manager keyword was ``registry=`` and is now ``plugins=``.
renamed_registry_keyword = renamed_keyword("registry", "plugins")
