"""Deprecated alias of :mod:`iqadef.store.results` (moved there); importing it warns and returns that module."""

import importlib
import sys
import warnings

warnings.warn(
    "iqadef.core.store moved to iqadef.store.results; import it from there (or the public names from iqadef)",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("iqadef.store.results")
