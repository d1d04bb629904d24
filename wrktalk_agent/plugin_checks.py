"""What the registry checks in a class a plugin registers: a valid name, the methods its
kind requires (``async``), well-formed release types, a settings model with its own
environment prefix."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from pydantic_settings import BaseSettings

from wrktalk_agent.contract import CONTRACTS, Kind
from wrktalk_agent.interfaces import RELEASE_TYPE_PATTERN
from wrktalk_agent.plugin_settings import expected_env_prefixes

#: Backend names become parts of environment variables and of the CLI's messages.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


@dataclass(frozen=True)
class Backend:
    kind: Kind
    name: str
    cls: type
    plugin: str


def check_backend(kind: Kind, cls: object, plugin: str) -> tuple[Backend | None, str | None]:
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
