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
import inspect
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pluggy
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from wrktalk_agent import hookspecs
from wrktalk_agent.contract import CONTRACTS, Kind
from wrktalk_agent.errors import PluginError, SettingsError
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import RELEASE_TYPE_PATTERN, PluginContext
from wrktalk_agent.secrets import mask_text, may_hold_secret

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
#: Backend names become parts of environment variables and of the CLI's messages.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


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


@dataclass(frozen=True)
class Backend:
    kind: Kind
    name: str
    cls: type
    plugin: str


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
                    backend, problem = _check_backend(kind, cls, plugin)
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


def expected_env_prefixes(backend_name: str, plugin: str | None = None) -> list[str]:
    """The environment prefixes a backend's settings model may use:
    ``WRKTALK_AGENT_<BACKEND>_`` or ``WRKTALK_AGENT_<PLUGIN>_`` (upper case, ``-`` → ``_``)."""
    names = [backend_name] + ([plugin] if plugin and plugin != backend_name else [])
    return [f"WRKTALK_AGENT_{re.sub(r'[^A-Za-z0-9]', '_', n).upper()}_" for n in names]


def _check_backend(kind: Kind, cls: object, plugin: str) -> tuple[Backend | None, str | None]:
    """The backend a registered class makes, and what is wrong with it (if anything)."""
    if not isinstance(cls, type):
        return None, f"registered {cls!r} as a {kind}, which is not a class"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None, (
            f"{kind} class {cls.__name__} has no valid name (got {name!r}; "
            "use a lowercase name of letters, digits, '-' and '_')"
        )
    backend = Backend(kind=kind, name=name, cls=cls, plugin=plugin)
    contract = CONTRACTS[kind]
    problems = []
    missing = [m for m in contract.required if not _implemented(cls, m)]
    if missing:
        problems.append(f"{kind} {name!r} lacks method(s): {', '.join(missing)}")
    problems += [f"{kind} {name!r}: {p}" for p in contract.near_misses(cls)]
    present = [m for m in contract.names if m not in missing]
    not_async = [
        m
        for m in present
        if callable(getattr(cls, m, None)) and not inspect.iscoroutinefunction(getattr(cls, m))
    ]
    if not_async:
        problems.append(f"{kind} {name!r}: method(s) not async: {', '.join(not_async)}")
    if kind == "deployer":
        chart_types = getattr(cls, "chart_types", ())
        if not isinstance(chart_types, tuple) or not all(isinstance(c, str) for c in chart_types):
            problems.append(
                f"deployer {name!r}: chart_types must be a tuple of strings (got {chart_types!r})"
            )
        else:
            odd = [c for c in chart_types if not RELEASE_TYPE_PATTERN.fullmatch(c)]
            if odd:
                problems.append(
                    f"deployer {name!r}: chart_types {odd!r} are not release type names "
                    "(1-40 characters from [0-9A-Za-z.+_-], starting with a letter or digit)"
                )
    model = getattr(cls, "settings_model", None)
    if model is not None:
        problem = _check_settings_model(kind, name, plugin, model)
        if problem:
            problems.append(problem)
    return backend, "; ".join(problems) or None


def _implemented(cls: type, method: str) -> bool:
    """Callable, and not a base class's abstract placeholder."""
    function = getattr(cls, method, None)
    return callable(function) and not getattr(function, "__isabstractmethod__", False)


def _check_settings_model(kind: Kind, name: str, plugin: str, model: object) -> str | None:
    if not (isinstance(model, type) and issubclass(model, BaseSettings)):
        return f"{kind} {name!r}: settings_model must be a pydantic_settings.BaseSettings class"
    prefix = str(model.model_config.get("env_prefix") or "")
    allowed = expected_env_prefixes(name, plugin)
    if prefix.upper() not in allowed:
        # without its own prefix, a field named `home` would silently read $HOME
        return (
            f"{kind} {name!r}: settings model {model.__name__} reads the environment with "
            f"prefix {prefix!r}; set model_config env_prefix={allowed[0]!r}"
        )
    return None


def load_backend_settings(
    cls: type, overrides: Mapping[str, Any] | None = None
) -> BaseSettings | None:
    """Instantiate ``cls.settings_model`` from the environment; ``overrides`` (field name →
    value) take precedence. Raises :class:`SettingsError` with one line per problem."""
    model: type[BaseSettings] | None = getattr(cls, "settings_model", None)
    if model is None:
        return None
    empty = _empty_path_variables(model, overrides or {})
    if empty:
        raise SettingsError(empty)
    try:
        return model(**dict(overrides or {}))
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, model)) from exc


def _is_path(annotation: Any) -> bool:
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_path(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_path(a) for a in typing.get_args(annotation))
    return False


def _empty_path_variables(model: type[BaseSettings], overrides: Mapping[str, Any]) -> list[str]:
    """One line per path field set to an empty value in the environment."""
    prefix = str(model.model_config.get("env_prefix") or "")
    lines = []
    for field_name, info in model.model_fields.items():
        if field_name in overrides or not _is_path(info.annotation):
            continue
        for variable in _variables(field_name, info, prefix):
            value = _getenv(variable)
            if value is not None and not value.strip():
                lines.append(f"{variable}: is empty; give a path, or unset it to use the default")
    return lines


def _variables(field_name: str, info: Any, prefix: str) -> list[str]:
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias.upper()]
    choices = getattr(alias, "choices", None)
    if choices:
        return [c.upper() for c in choices if isinstance(c, str)]
    return [f"{prefix}{field_name}".upper()]


def _getenv(variable: str) -> str | None:
    """Environment lookup as pydantic-settings does it (case-insensitive)."""
    if variable in os.environ:
        return os.environ[variable]
    lowered = variable.lower()
    for key, value in os.environ.items():
        if key.lower() == lowered:
            return value
    return None


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
        field_name = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        entries = [p for p in err["loc"] if isinstance(p, int)]
        env_name = _env_name(model, field_name, prefix)
        if entries:  # one entry of a list setting (e.g. the second port of DB_PORT)
            env_name += f" (entry {entries[0] + 1})"
        value = err.get("input")
        shown = (
            ""
            if may_hold_secret(field_name) or isinstance(value, dict)
            else f" (got {mask_text(repr(value))})"
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
