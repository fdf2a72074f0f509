"""Deprecated alias of :mod:`iqadef.execute` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.run moved to iqadef.execute; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.execute")
