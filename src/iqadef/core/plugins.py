"""Plugin manager: finds built-in and third-party plugins and collects what they register.

Built-ins (every module under ``iqadef.plugins.metrics|attacks|defences|scores``) are registered
exactly like third-party packages, which are found through the entry-point group ``iqadef``.

* A plugin that fails to import or to register is skipped with a :class:`PluginLoadWarning` naming
  its distribution and the error; ``IQADEF_STRICT_PLUGINS=1`` (or ``strict=True``) makes it fatal.
  "Fails" means any exception, ``SystemExit`` and ``GeneratorExit`` included (a plugin calling
  ``sys.exit(0)`` at import must not end every command silently with status 0); only
  ``KeyboardInterrupt`` goes through.
* ``IQADEF_LOAD_PLUGINS=a,b`` loads only those third-party plugins (distribution or entry-point
  names; built-ins always load). ``IQADEF_LOAD_PLUGINS=`` (empty) loads none.
* Two plugins registering the same name is a :class:`PluginError` naming both distributions.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

import importlib_metadata
import pluggy

from .._version import __version__
from . import hookspecs
from .errors import ConfigError, PluginError
from .kinds import KINDS
from .suggest import did_you_mean

ENTRY_POINT_GROUP = "iqadef"

#: kind -> hook name (the kinds themselves are defined in :mod:`.kinds`).
HOOKS = {section: kind.hook for section, kind in KINDS.items()}
SINGULAR = {section: kind.singular for section, kind in KINDS.items()}

BUILTIN_PACKAGES = tuple(f"iqadef.plugins.{kind}" for kind in HOOKS)
BUILTIN_DISTRIBUTION = "iqadef"


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to import or register."""


@dataclass
class PluginInfo:
    """One loaded plugin module (or entry point) and what it registered."""

    name: str
    distribution: str
    version: str
    builtin: bool
    registers: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "builtin": self.builtin, "registers": {k: v for k, v in self.registers.items() if v}}


@dataclass
class Registration:
    cls: type
    plugin: PluginInfo


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _builtin_modules() -> list[str]:
    names = []
    for package in BUILTIN_PACKAGES:
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                names.append(f"{package}.{info.name}")
    return sorted(names)


class PluginRegistry:
    """All plugins of one process, by kind and name."""

    def __init__(self, *, strict: bool | None = None, load: Iterable[str] | None = None,
                 entry_points: bool = True, extra: Iterable[Any] = ()):
        self.strict = _env_flag("IQADEF_STRICT_PLUGINS") if strict is None else strict
        if load is None and "IQADEF_LOAD_PLUGINS" in os.environ:
            load = [s.strip() for s in os.environ["IQADEF_LOAD_PLUGINS"].split(",") if s.strip()]
        self.only = None if load is None else set(load)
        self.pm = pluggy.PluginManager("iqadef")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self.by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in HOOKS}
        self._load_builtins()
        if entry_points:
            self._load_entry_points()
        for obj in extra:  # plugins given in code (tests, notebooks): registered like any other
            name = getattr(obj, "__name__", type(obj).__name__)
            self._add(obj, PluginInfo(name, "<local>", "0", builtin=False))
        self._collect()

    # -- loading -----------------------------------------------------------------------------
    def _skip(self, message: str) -> None:
        if self.strict:
            raise PluginError(message + " (strict plugin mode: IQADEF_STRICT_PLUGINS / --strict-plugins)")
        self.problems.append(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    def _add(self, obj: Any, info: PluginInfo) -> None:
        self.pm.register(obj, name=info.name)
        self.plugins[info.name] = info

    def _load_builtins(self) -> None:
        for modname in _builtin_modules():
            info = PluginInfo(modname, BUILTIN_DISTRIBUTION, __version__, builtin=True)
            try:
                self._add(importlib.import_module(modname), info)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken plugin must not take the tool down
                self._skip(f"plugin {modname!r} (distribution {BUILTIN_DISTRIBUTION!r}) failed to import: "
                           f"{_describe(exc)}")

    def _load_entry_points(self) -> None:
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            version = ep.dist.version if ep.dist is not None else "?"
            if self.only is not None and ep.name not in self.only and dist not in self.only:
                continue
            info = PluginInfo(f"{dist}:{ep.name}", dist, version, builtin=False)
            if info.name in self.plugins:
                continue
            try:
                self._add(ep.load(), info)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit at import included
                self._skip(f"plugin {ep.name!r} from distribution {dist!r} failed to load: {_describe(exc)}")

    def _collect(self) -> None:
        for kind, hook_name in HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                info = self.plugins[impl.plugin_name]
                found: list[type] = []
                try:
                    impl.function(register=found.append)
                    for cls in found:
                        _check_class(cls, kind)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit in a hook included
                    self._skip(f"plugin {info.name!r} (distribution {info.distribution!r}) failed to "
                               f"register {kind}: {_describe(exc)}")
                    continue
                for cls in found:
                    self._register(kind, cls, info)

    def _register(self, kind: str, cls: type, info: PluginInfo) -> None:
        table = self.by_kind[kind]
        if cls.name in table:
            other = table[cls.name].plugin
            raise PluginError(
                f"two plugins register the {SINGULAR[kind]} {cls.name!r}: {other.name!r} (distribution "
                f"{other.distribution!r}) and {info.name!r} (distribution {info.distribution!r}); "
                f"uninstall one, or load only one with IQADEF_LOAD_PLUGINS")
        table[cls.name] = Registration(cls, info)
        info.registers.setdefault(kind, []).append(cls.name)

    # -- lookup -------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind[kind])

    def get(self, kind: str, name: str, where: str | None = None) -> type:
        """The class registered as ``name``; a ConfigError with a did-you-mean otherwise."""
        table = self.by_kind[kind]
        if name in table:
            return table[name].cls
        where = f"{where}: " if where else ""
        raise ConfigError(f"{where}unknown {SINGULAR[kind]} {name!r}{did_you_mean(str(name), table)}; "
                          f"`iqadef list {kind}` shows the {len(table)} available")

    def registration(self, kind: str, name: str) -> Registration:
        return self.by_kind[kind][name]

    def describe(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for name in self.names(kind):
            reg = self.by_kind[kind][name]
            if hasattr(reg.cls, "describe"):
                d = reg.cls.describe()
            else:  # a plain summary-score class that is not an iqadef.Plugin
                d = {"name": reg.cls.name, "kind": getattr(reg.cls, "kind", SINGULAR[kind]),
                     "doc": (reg.cls.__doc__ or "").strip(), "params": []}
            d["plugin"] = reg.plugin.name
            d["distribution"] = reg.plugin.distribution
            out.append(d)
        return out


def _describe(exc: BaseException) -> str:
    """``Type: message``; a bare ``SystemExit(0)`` says what it did, since its message is just ``0``."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit() / raised SystemExit"
    return f"{type(exc).__name__}: {exc}"


def _check_class(cls: Any, kind: str) -> None:
    KINDS[kind].check(cls)


@lru_cache(maxsize=1)
def get_registry() -> PluginRegistry:
    """The process-wide registry (built on first use)."""
    return PluginRegistry()


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin)."""
    get_registry.cache_clear()
