"""Deprecated alias of :mod:`iqadef.export` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.export moved to iqadef.export; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.export")
