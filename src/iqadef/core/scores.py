"""Deprecated alias of :mod:`iqadef.analysis.scores` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.scores moved to iqadef.analysis.scores; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.analysis.scores")
