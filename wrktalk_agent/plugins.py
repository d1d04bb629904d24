"""Discovering plugins and selecting backends by name.

Plugins come from the entry-point group ``wrktalk_agent`` (built-in backends too) and,
for development and tests, from modules named in ``WRKTALK_AGENT_EXTRA_PLUGINS``.

A plugin is checked plugin by plugin, and one that is broken is isolated: it fails to
import, implements a hook that does not exist (a misspelled name) or with the wrong
arguments, raises from a hook, or registers a backend that breaks the contract (no name,
a missing or non-``async`` method, a settings model without its own
``WRKTALK_AGENT_<NAME>_`` prefix, a name another plugin already provides). Listing shows
it as broken with the reason; selecting one of its backends is an error that names the
plugin and the problem; nothing else is affected.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
from pydantic import ValidationError

from wrktalk_agent import hookspecs
from wrktalk_agent.contract import CONTRACTS, Kind
from wrktalk_agent.errors import PluginError, SettingsError
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import PluginContext
from wrktalk_agent.plugin_checks import Backend, check_backend
from wrktalk_agent.plugin_settings import (
    expected_env_prefixes,
    format_validation_error,
    load_backend_settings,
)

__all__ = [
    "Backend",
    "Kind",
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "SettingsError",
    "expected_env_prefixes",
    "format_validation_error",
    "load_backend_settings",
]

_HOOK_BY_KIND: dict[Kind, str] = {kind: c.hook for kind, c in CONTRACTS.items()}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    #: why the plugin is unusable (``None``: it is fine)
    error: str | None = None
    #: ``"import"`` (the module failed to import) or ``"invalid"`` (it breaks the contract)
    error_kind: Literal["import", "invalid"] | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "backends": self.backends,
            "error": self.error,
            "error_kind": self.error_kind,
        }


class PluginRegistry:
    """Loads plugins once and knows every registered backend.

    ``settings_overrides`` maps a backend name to field values that take precedence over
    the environment when its settings model is loaded (``{"smtp": {"port": 2525}}``), so
    an embedding program (the demo, a test) never rewrites ``os.environ``.
    """

    def __init__(
        self,
        extra_modules: Iterable[str] = (),
        *,
        entry_points: bool = True,
        settings_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.backends: dict[Kind, dict[str, Backend]] = {k: {} for k in _HOOK_BY_KIND}
        self.settings_overrides: dict[str, dict[str, Any]] = {
            name: dict(values) for name, values in (settings_overrides or {}).items()
        }
        #: backends seen in a broken plugin: selecting one names the plugin's problem
        self._broken_backends: dict[tuple[Kind, str], str] = {}
        #: names two plugins provide: selecting one is refused rather than guessed
        self._clashes: dict[tuple[Kind, str], str] = {}
        if entry_points:
            self._load_entry_points()
        for module_name in extra_modules:
            self._load_module(module_name)
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
                _mark(info, "import", describe(exc))
                continue
            self._register(module, info)

    def _load_module(self, module_name: str) -> None:
        info = PluginInfo(name=module_name, distribution=None, version=None)
        self.plugins[module_name] = info
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            _mark(info, "import", describe(exc))
            return
        if self.pm.is_registered(module):
            del self.plugins[module_name]
            return
        self._register(module, info)

    def _register(self, module: object, info: PluginInfo) -> None:
        """Register one plugin with pluggy, isolating it when its hooks are malformed."""
        try:
            self.pm.register(module, name=info.name)
        except pluggy.PluginValidationError as exc:  # a hookimpl's arguments are wrong
            _mark(info, "invalid", " ".join(str(exc).split()))
            return
        except ValueError as exc:  # pluggy: the same name or object registered twice
            _mark(info, "invalid", str(exc))
            return
        unknown = self._unknown_hooks(module, info.name)
        if unknown:
            _mark(info, "invalid", "; ".join(unknown))
            self.pm.unregister(module)

    def _unknown_hooks(self, module: object, plugin: str) -> list[str]:
        """Hook implementations whose name is no hook of ours (``check_pending``, for
        this plugin only: the others must not suffer from its typo)."""
        known = sorted(_HOOK_BY_KIND.values())
        problems = []
        for caller in self.pm.get_hookcallers(module) or []:
            if caller.spec is not None:
                continue
            impls = [i for i in caller.get_hookimpls() if i.plugin_name == plugin]
            if all(i.optionalhook for i in impls):
                continue
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; hooks: {', '.join(known)}"
            problems.append(f"{caller.name!r} is not a wrktalk-agent hook{hint}")
        return problems

    def register_module(self, module: types.ModuleType | object, name: str) -> None:
        """Register an already imported plugin object (tests, embedding). Raises
        :class:`PluginError` when the plugin is broken (it stays listed as broken)."""
        info = PluginInfo(name=name, distribution=None, version=None)
        self.plugins[name] = info
        self._register(module, info)
        self._collect()
        if info.error is not None:
            raise PluginError(f"plugin {name!r} is invalid: {info.error}")

    def _collect(self) -> None:
        """Call the registration hooks plugin by plugin; a plugin with any problem
        contributes no backend at all (half a plugin would be a surprise)."""
        self.backends = {k: {} for k in _HOOK_BY_KIND}
        self._broken_backends, self._clashes = {}, {}
        found: dict[str, list[Backend]] = {}
        problems: dict[str, list[str]] = {}
        for info in self.plugins.values():
            info.hooks, info.backends = [], []
            if info.error_kind == "invalid" and info.error and info.error.startswith("two plugins"):
                info.error = info.error_kind = None  # a name clash is decided again below
        for kind, hook_name in _HOOK_BY_KIND.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                info = self.plugins.setdefault(plugin, PluginInfo(plugin, None, None))
                info.hooks.append(hook_name)
                registered: list[type] = []
                try:
                    impl.function(registered.append)
                except Exception as exc:  # third-party code: contained like an import error
                    problems.setdefault(plugin, []).append(f"{hook_name} raised {describe(exc)}")
                for cls in registered:
                    backend, problem = check_backend(kind, cls, plugin)
                    if backend is not None:
                        found.setdefault(plugin, []).append(backend)
                    if problem is not None:
                        problems.setdefault(plugin, []).append(problem)
        for plugin, info in self.plugins.items():
            if plugin in problems:
                _mark(info, "invalid", "; ".join(problems[plugin]))
            backends = found.get(plugin, [])
            if info.error is not None:
                for backend in backends:
                    self._broken_backends[(backend.kind, backend.name)] = plugin
                continue
            clash = self._clash(backends)
            if clash is not None:
                key, message = clash
                _mark(info, "invalid", message)
                self._clashes[key] = message
                continue
            for backend in backends:
                self.backends[backend.kind][backend.name] = backend
                info.backends.append(f"{backend.kind}:{backend.name}")

    def _clash(self, backends: list[Backend]) -> tuple[tuple[Kind, str], str] | None:
        for backend in backends:
            existing = self.backends[backend.kind].get(backend.name)
            if existing is not None and existing.cls is not backend.cls:
                return (backend.kind, backend.name), (
                    f"two plugins provide a {backend.kind} named {backend.name!r}: "
                    f"{existing.plugin!r} and {backend.plugin!r}; uninstall one of them"
                )
        return None

    # -- selection -------------------------------------------------------------------
    def names(self, kind: Kind) -> list[str]:
        return sorted(self.backends[kind])

    def release_types(self) -> tuple[str, ...] | None:
        """The release types (``chart_type``) the usable deployers declare, sorted;
        ``None`` when one of them takes any type (``chart_types = ()``)."""
        declared: set[str] = set()
        for backend in self.backends["deployer"].values():
            types_ = tuple(getattr(backend.cls, "chart_types", ()))
            if not types_:
                return None
            declared.update(types_)
        return tuple(sorted(declared))

    def declared_release_types(self) -> dict[str, list[str]]:
        """Each release type a usable deployer names → the deployers naming it."""
        named: dict[str, list[str]] = {}
        for name, backend in sorted(self.backends["deployer"].items()):
            for chart_type in getattr(backend.cls, "chart_types", ()):
                named.setdefault(chart_type, []).append(name)
        return dict(sorted(named.items()))

    def any_type_deployers(self) -> list[str]:
        """The usable deployers that take a release of any type."""
        return sorted(
            name
            for name, backend in self.backends["deployer"].items()
            if not getattr(backend.cls, "chart_types", ())
        )

    def broken(self) -> list[PluginInfo]:
        return [info for info in self.infos() if info.error is not None]

    def get(self, kind: Kind, name: str) -> Backend:
        clash = self._clashes.get((kind, name))
        if clash is not None:
            raise PluginError(clash)
        backend = self.backends[kind].get(name)
        if backend is not None:
            return backend
        owner = self._broken_backends.get((kind, name))
        if owner is None and name in self.plugins and self.plugins[name].error:
            owner = name  # a plugin that failed to import: its name is the best guess
        if owner is not None:
            info = self.plugins[owner]
            origin = info.distribution or "module"
            if info.error_kind == "import":
                raise PluginError(
                    f"the {kind} {name!r} comes from plugin {owner!r} "
                    f"({origin}), which failed to import: {info.error}"
                )
            raise PluginError(
                f"the {kind} {name!r} comes from plugin {owner!r} ({origin}), "
                f"which is invalid: {info.error}"
            )
        installed = ", ".join(self.names(kind)) or "none"
        message = (
            f"no installed plugin provides a {kind} named {name!r}; installed {kind}s: {installed}"
        )
        if kind == "maintenance handler":
            message += " (or 'none' to switch maintenance mode off)"
        failures = self.broken()
        if failures:
            message += "; broken plugins: " + ", ".join(f"{p.name} ({p.error})" for p in failures)
        raise PluginError(message)

    def instantiate(
        self,
        kind: Kind,
        name: str,
        context: PluginContext,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """Load the backend's settings (environment, then ``settings_overrides`` for its
        name, then ``overrides``) and build it with ``cls(settings, context)``."""
        backend = self.get(kind, name)
        values = {**self.settings_overrides.get(name, {}), **(overrides or {})}
        settings = load_backend_settings(backend.cls, values)
        try:
            return backend.cls(settings, context)
        except ValidationError as exc:  # settings validated late inside the backend
            raise SettingsError(format_validation_error(exc, None)) from exc
        except PluginError:
            raise
        except Exception as exc:
            why = str(exc).strip() or type(exc).__name__
            raise PluginError(f"could not start {kind} {name!r}: {why}") from exc

    def infos(self) -> list[PluginInfo]:
        return sorted(self.plugins.values(), key=lambda p: p.name)


def _mark(info: PluginInfo, kind: Literal["import", "invalid"], error: str) -> None:
    if info.error is None:
        info.error, info.error_kind = error, kind
    elif error not in info.error:
        info.error += f"; {error}"
