"""Plugin manager: finds built-in and third-party plugins and collects what they register.

Built-ins are registered through the same hooks as third-party packages (found through the entry-point
group ``iqadef``), but lazily: each kind's package (``iqadef.plugins.metrics``, ...) is an index whose
hookimpls register a :class:`~iqadef.core.hookspecs.LazyPlugin` (name -> ``"module:Class"``) per plugin,
and a module is imported when its class is first used (as pyiqa and lm-eval register their models). Names,
``iqadef --help`` and the report's summary scores need no plugin module, so no torch; ``iqadef list``
imports the modules of the kind it lists (their descriptions and parameters), never torchvision nor a
network. Each built-in is shown as its own module (``iqadef plugins``), as when it was imported eagerly.

* A plugin that fails to import or to register is skipped with a :class:`PluginLoadWarning` naming
  its distribution and the error; ``IQADEF_STRICT_PLUGINS=1`` (or ``strict=True``) makes it fatal.
  "Fails" means any exception, ``SystemExit`` and ``GeneratorExit`` included (a plugin calling
  ``sys.exit(0)`` at import must not end every command silently with status 0); only
  ``KeyboardInterrupt`` goes through.
* ``IQADEF_LOAD_PLUGINS=a,b`` loads only those third-party plugins (distribution or entry-point
  names; built-ins always load). ``IQADEF_LOAD_PLUGINS=`` (empty) loads none.
* Two plugins registering the same name is a :class:`PluginError` naming both distributions.
* A lazy plugin whose module fails to import, or whose class is not what it was registered as, is a
  :class:`PluginError` where it is used (``iqadef list`` leaves it out with a warning, unless strict).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

import importlib_metadata
import pluggy

from iqadef._version import __version__
from iqadef.core import hookspecs
from iqadef.core.errors import ConfigError, PluginError
from iqadef.core.hookspecs import LazyPlugin
from iqadef.core.kinds import KINDS
from iqadef.core.suggest import did_you_mean

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
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "registers": {k: v for k, v in self.registers.items() if v},
        }


class Registration:
    """One registered class of a kind: given as a class, or as a :class:`LazyPlugin` imported on first use of
    :attr:`cls` (a failure is a PluginError naming the plugin)."""

    def __init__(self, kind: str, entry: type | LazyPlugin, plugin: PluginInfo):
        self.kind = kind
        self.entry = entry
        self.plugin = plugin
        self._cls: type | None = None if isinstance(entry, LazyPlugin) else entry

    @property
    def lazy(self) -> bool:
        return isinstance(self.entry, LazyPlugin)

    @property
    def loaded(self) -> bool:
        return self._cls is not None

    @property
    def cls(self) -> type:
        if self._cls is None:
            self._cls = _import_lazy(self.kind, self.entry, self.plugin)  # type: ignore[arg-type]
        return self._cls

    @property
    def summary(self) -> bool:
        """Scores: a summary score (known without importing a lazy one)."""
        if isinstance(self.entry, LazyPlugin):
            return self.entry.summary
        return is_summary_score(self.entry)


def is_summary_score(cls: Any) -> bool:
    """A summary score (``summarise``), not a per-image ImageScore. An ImageScore subclass exists only once
    :mod:`.base` is imported, so a process without it (the report) needs no torch to tell."""
    base = sys.modules.get("iqadef.core.base")
    image_score = base is not None and isinstance(cls, type) and issubclass(cls, base.ImageScore)
    return hasattr(cls, "summarise") and not image_score


def _import_lazy(kind: str, entry: LazyPlugin, plugin: PluginInfo) -> type:
    """The class ``entry`` names, checked against what it was registered as."""
    where = (
        f"plugin {plugin.name!r} (distribution {plugin.distribution!r}): {SINGULAR[kind]} {entry.name!r} "
        f"({entry.target})"
    )
    module, _, attribute = entry.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import included, as for any plugin
        raise PluginError(f"{where} failed to import: {_describe(exc)}") from None
    try:
        _check_class(cls, kind)
    except TypeError as exc:
        raise PluginError(f"{where}: {exc}") from None
    wrong = [
        f"{field} {getattr(cls, field, None)!r}, registered as {value!r}"
        for field, value in (("name", entry.name), *((("help", entry.help),) if kind == "commands" else ()))
        if getattr(cls, field, None) != value
    ]
    if kind == "scores" and is_summary_score(cls) != entry.summary:
        wrong.append(f"summary score {is_summary_score(cls)}, registered as {entry.summary}")
    if wrong:
        raise PluginError(f"{where} does not match its registration: {'; '.join(wrong)}")
    return cls


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class InstalledPlugins:
    """All plugins of one process, by kind and name."""

    def __init__(
        self,
        *,
        strict: bool | None = None,
        load: Iterable[str] | None = None,
        entry_points: bool = True,
        extra: Iterable[Any] = (),
    ):
        self.strict = _env_flag("IQADEF_STRICT_PLUGINS") if strict is None else strict
        if load is None and "IQADEF_LOAD_PLUGINS" in os.environ:
            load = [s.strip() for s in os.environ["IQADEF_LOAD_PLUGINS"].split(",") if s.strip()]
        self.only = None if load is None else set(load)
        self.pm = pluggy.PluginManager("iqadef")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._hooked: dict[str, PluginInfo] = {}  # pluggy's plugin name -> who registered (built-in indexes too)
        self.problems: list[str] = []
        self.by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in HOOKS}
        self._load_builtins()
        if entry_points:
            self._load_entry_points()
        for obj in extra:  # plugins given in code (tests, notebooks): registered like any other
            name = getattr(obj, "__name__", type(obj).__name__)
            self._add(obj, PluginInfo(name, "<local>", "0", builtin=False))
        self._collect()
        builtins = sorted((info for info in self.plugins.values() if info.builtin), key=lambda info: info.name)
        self.plugins = {info.name: info for info in builtins + [i for i in self.plugins.values() if not i.builtin]}

    # -- loading -----------------------------------------------------------------------------
    def _skip(self, message: str) -> None:
        if self.strict:
            raise PluginError(message + " (strict plugin mode: IQADEF_STRICT_PLUGINS / --strict-plugins)")
        self.problems.append(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    def _add(self, obj: Any, info: PluginInfo, listed: bool = True) -> None:
        self.pm.register(obj, name=info.name)
        self._hooked[info.name] = info
        if listed:
            self.plugins[info.name] = info

    def _load_builtins(self) -> None:
        """The index of each kind (its package, light): the modules it names register lazily, each shown as
        its own plugin (:meth:`_owner`)."""
        for package in BUILTIN_PACKAGES:
            info = PluginInfo(package, BUILTIN_DISTRIBUTION, __version__, builtin=True)
            try:
                self._add(importlib.import_module(package), info, listed=False)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a broken plugin must not take the tool down
                self._skip(
                    f"plugin {package!r} (distribution {BUILTIN_DISTRIBUTION!r}) failed to import: {_describe(exc)}"
                )

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
                info = self._hooked[impl.plugin_name]
                found: list[type | LazyPlugin] = []
                try:
                    impl.function(register=found.append)
                    for entry in found:
                        if not isinstance(entry, LazyPlugin):
                            _check_class(entry, kind)
                        elif not (entry.name and entry.module and entry.target.partition(":")[2]):
                            raise TypeError(
                                f"LazyPlugin({entry.name!r}, {entry.target!r}): give a name and 'module:Class'"
                            )
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit in a hook included
                    self._skip(
                        f"plugin {info.name!r} (distribution {info.distribution!r}) failed to "
                        f"register {kind}: {_describe(exc)}"
                    )
                    continue
                for entry in found:
                    self._register(kind, entry, self._owner(entry, info))

    def _owner(self, entry: type | LazyPlugin, info: PluginInfo) -> PluginInfo:
        """Who a class is shown as registered by: for a built-in index, the module it names."""
        if not (info.builtin and isinstance(entry, LazyPlugin)):
            return info
        if entry.module not in self.plugins:
            self.plugins[entry.module] = PluginInfo(entry.module, info.distribution, info.version, builtin=True)
        return self.plugins[entry.module]

    def _register(self, kind: str, entry: type | LazyPlugin, info: PluginInfo) -> None:
        table = self.by_kind[kind]
        name = entry.name
        if name in table:
            other = table[name].plugin
            raise PluginError(
                f"two plugins register the {SINGULAR[kind]} {name!r}: {other.name!r} (distribution "
                f"{other.distribution!r}) and {info.name!r} (distribution {info.distribution!r}); "
                f"uninstall one, or load only one with IQADEF_LOAD_PLUGINS"
            )
        table[name] = Registration(kind, entry, info)
        info.registers.setdefault(kind, []).append(name)

    # -- lookup -------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind[kind])

    def get(self, kind: str, name: str, where: str | None = None) -> type:
        """The class registered as ``name``; a ConfigError with a did-you-mean otherwise."""
        table = self.by_kind[kind]
        if name in table:
            return table[name].cls
        where = f"{where}: " if where else ""
        raise ConfigError(
            f"{where}unknown {SINGULAR[kind]} {name!r}{did_you_mean(str(name), table)}; "
            f"`iqadef list {kind}` shows the {len(table)} available"
        )

    def registration(self, kind: str, name: str) -> Registration:
        return self.by_kind[kind][name]

    def describe(self, kind: str) -> list[dict[str, Any]]:
        """What ``iqadef list`` shows (imports the lazy plugins of ``kind``; one that fails is left out with a
        warning, or is fatal in strict mode)."""
        out = []
        for name in self.names(kind):
            reg = self.by_kind[kind][name]
            try:
                reg.cls
            except PluginError as exc:
                self._skip(str(exc))
                continue
            if hasattr(reg.cls, "describe"):
                d = reg.cls.describe()
            else:  # a plain summary-score class that is not an iqadef.Plugin
                d = {
                    "name": reg.cls.name,
                    "kind": getattr(reg.cls, "kind", SINGULAR[kind]),
                    "doc": (reg.cls.__doc__ or "").strip(),
                    "params": [],
                }
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
def installed_plugins() -> InstalledPlugins:
    """The process-wide registry (built on first use)."""
    return InstalledPlugins()


def reset_installed_plugins() -> None:
    """Forget the cached registry (tests, or after installing a plugin)."""
    installed_plugins.cache_clear()


#: Names before "registry" came to mean only the registry file (``registry.yaml``); kept for third-party code.
_DEPRECATED = {
    "PluginRegistry": "InstalledPlugins",
    "get_registry": "installed_plugins",
    "reset_registry": "reset_installed_plugins",
}


def __getattr__(name: str):
    if name in _DEPRECATED:
        warnings.warn(f"iqadef: {name} is now {_DEPRECATED[name]}", DeprecationWarning, stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
