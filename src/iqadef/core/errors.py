"""Errors a user can act on.

Anything derived from :class:`IqadefError` is printed by the CLI as one line (no traceback) and
turns into a non-zero exit status. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class IqadefError(Exception):
    """Base class for mistakes the user can fix (bad registry, missing weights, ...)."""


class ConfigError(IqadefError, ValueError):
    """A registry / parameter value is wrong. The message names the key path and what is allowed."""


class PluginError(IqadefError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class WeightsError(IqadefError):
    """Model weights are missing, corrupt, or fail their checksum."""


class RunLockedError(IqadefError):
    """Another process is already running in this run directory."""
