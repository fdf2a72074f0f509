"""Deprecated alias of :mod:`iqadef.core.numerics` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.precision moved to iqadef.core.numerics; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.core.numerics")
