"""Discovering plugins and selecting backends by name.

Plugins come from the entry-point group ``wrktalk_agent`` (built-in backends too) and,
for development and tests, from modules named in ``WRKTALK_AGENT_EXTRA_PLUGINS``. A
plugin that fails to import is remembered: listing shows it as a warning, selecting one of
its backends is an error that says why.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import pluggy
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from wrktalk_agent import hookspecs
from wrktalk_agent.interfaces import Deployer, MaintenanceHandler, Notifier, PluginContext

Kind = Literal["deployer", "maintenance handler", "notifier"]

_HOOK_BY_KIND: dict[Kind, str] = {
    "deployer": "wrktalk_register_deployers",
    "maintenance handler": "wrktalk_register_maintenance_handlers",
    "notifier": "wrktalk_register_notifiers",
}
_PROTOCOL_BY_KIND: dict[Kind, type] = {
    "deployer": Deployer,
    "maintenance handler": MaintenanceHandler,
    "notifier": Notifier,
}
_REQUIRED_METHODS: dict[Kind, tuple[str, ...]] = {
    "deployer": ("check", "deploy", "rollback"),
    "maintenance handler": ("check", "enable", "disable", "status"),
    "notifier": ("check", "notify"),
}


class PluginError(Exception):
    """A plugin could not be loaded, selected or configured; the message names the fix."""


class SettingsError(PluginError):
    """A backend's settings failed validation; ``lines`` holds one readable line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "backends": self.backends,
            "error": self.error,
        }


@dataclass(frozen=True)
class Backend:
    kind: Kind
    name: str
    cls: type
    plugin: str


class PluginRegistry:
    """Loads plugins once and knows every registered backend."""

    def __init__(self, extra_modules: Iterable[str] = (), *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.backends: dict[Kind, dict[str, Backend]] = {k: {} for k in _HOOK_BY_KIND}
        self._registration_errors: list[str] = []
        if entry_points:
            self._load_entry_points()
        for module_name in extra_modules:
            self._load_module(module_name)
        self.pm.check_pending()
        self._collect()

    # -- loading ---------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in md.entry_points(group=hookspecs.PROJECT_NAME):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            dist = ep.dist
            info = PluginInfo(
                name=ep.name,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            self.plugins[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                info.error = f"{type(exc).__name__}: {exc}"
                continue
            self.pm.register(module, name=ep.name)

    def _load_module(self, module_name: str) -> None:
        info = PluginInfo(name=module_name, distribution=None, version=None)
        self.plugins[module_name] = info
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            return
        if self.pm.is_registered(module):
            del self.plugins[module_name]
            return
        self.pm.register(module, name=module_name)

    def register_module(self, module: ModuleType | object, name: str) -> None:
        """Register an already imported plugin object (tests, embedding)."""
        self.plugins[name] = PluginInfo(name=name, distribution=None, version=None)
        self.pm.register(module, name=name)
        self.pm.check_pending()
        self._collect()

    def _collect(self) -> None:
        self.backends = {k: {} for k in _HOOK_BY_KIND}
        for info in self.plugins.values():
            info.hooks, info.backends = [], []
        for kind, hook_name in _HOOK_BY_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                owner = self.plugins.get(impl.plugin_name)
                if owner is not None:
                    owner.hooks.append(hook_name)

                def register(
                    cls: type, *, _kind: Kind = kind, _plugin: str = impl.plugin_name
                ) -> None:
                    self._register_backend(_kind, cls, _plugin)

                impl.function(register)

    def _register_backend(self, kind: Kind, cls: type, plugin: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} class without a name")
        missing = [m for m in _REQUIRED_METHODS[kind] if not callable(getattr(cls, m, None))]
        if missing:
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} without method(s): "
                + ", ".join(missing)
            )
        existing = self.backends[kind].get(name)
        if existing is not None and existing.cls is not cls:
            raise PluginError(
                f"two plugins provide a {kind} named {name!r}: "
                f"{existing.plugin!r} and {plugin!r}; uninstall one of them"
            )
        self.backends[kind][name] = Backend(kind=kind, name=name, cls=cls, plugin=plugin)
        info = self.plugins.get(plugin)
        if info is not None:
            info.backends.append(f"{kind}:{name}")

    # -- selection -------------------------------------------------------------------
    def names(self, kind: Kind) -> list[str]:
        return sorted(self.backends[kind])

    def get(self, kind: Kind, name: str) -> Backend:
        backend = self.backends[kind].get(name)
        if backend is not None:
            return backend
        broken = self.plugins.get(name)
        if broken is not None and broken.error:
            raise PluginError(
                f"the {kind} {name!r} comes from plugin {name!r} "
                f"({broken.distribution or 'module'}), which failed to import: {broken.error}"
            )
        installed = ", ".join(self.names(kind)) or "none"
        message = (
            f"no installed plugin provides a {kind} named {name!r}; installed {kind}s: {installed}"
        )
        if kind == "maintenance handler":
            message += " (or 'none' to switch maintenance mode off)"
        failures = [p for p in self.plugins.values() if p.error]
        if failures:
            message += "; plugins that failed to import: " + ", ".join(
                f"{p.name} ({p.error})" for p in failures
            )
        raise PluginError(message)

    def instantiate(self, kind: Kind, name: str, context: PluginContext) -> Any:
        backend = self.get(kind, name)
        settings = load_backend_settings(backend.cls)
        try:
            return backend.cls(settings, context)
        except ValidationError as exc:  # settings validated late inside the backend
            raise SettingsError(format_validation_error(exc, None)) from exc
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"could not start {kind} {name!r}: {exc}") from exc

    def infos(self) -> list[PluginInfo]:
        return sorted(self.plugins.values(), key=lambda p: p.name)


def load_backend_settings(cls: type) -> BaseSettings | None:
    model: type[BaseSettings] | None = getattr(cls, "settings_model", None)
    if model is None:
        return None
    try:
        return model()
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, model)) from exc


def format_validation_error(exc: ValidationError, model: type[BaseSettings] | None) -> list[str]:
    """One readable line per problem, naming the environment variable."""
    prefix = ""
    if model is not None:
        prefix = str(model.model_config.get("env_prefix", ""))
    lines = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields: its message names the variables
            lines.append(message)
            continue
        field_name = ".".join(str(p) for p in err["loc"])
        env_name = _env_name(model, field_name, prefix)
        value = err.get("input")
        shown = (
            "" if _is_secret_field(field_name) or isinstance(value, dict) else f" (got {value!r})"
        )
        lines.append(f"{env_name}: {message}{shown}")
    return lines


def _env_name(model: type[BaseSettings] | None, field_name: str, prefix: str) -> str:
    if model is not None:
        top = field_name.split(".")[0]
        if top not in model.model_fields:  # pydantic reports an alias: it is the variable
            return top.upper()
        info = model.model_fields.get(top)
        alias = getattr(info, "validation_alias", None) if info else None
        if isinstance(alias, str):
            return alias.upper()
    return f"{prefix}{field_name}".upper()


def _is_secret_field(field_name: str) -> bool:
    lowered = field_name.lower()
    return any(word in lowered for word in ("password", "secret", "token", "url", "key"))
