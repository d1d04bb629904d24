"""A backend's settings: loaded from the environment (and overrides) into its own
pydantic-settings model, with one readable line per problem naming the variable."""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from wrktalk_agent.errors import SettingsError
from wrktalk_agent.secrets import mask_text, may_hold_secret


def expected_env_prefixes(backend_name: str, plugin: str | None = None) -> list[str]:
    """The environment prefixes a backend's settings model may use:
    ``WRKTALK_AGENT_<BACKEND>_`` or ``WRKTALK_AGENT_<PLUGIN>_`` (upper case, ``-`` → ``_``)."""
    names = [backend_name] + ([plugin] if plugin and plugin != backend_name else [])
    return [f"WRKTALK_AGENT_{re.sub(r'[^A-Za-z0-9]', '_', n).upper()}_" for n in names]


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
