"""Settings tables for the docs, generated from the pydantic-settings models.

``docs/operator.md`` holds one generated table per model between markers::

    <!-- settings:agent -->
    ...
    <!-- /settings:agent -->

``agent`` is :class:`~wrktalk_agent.config.AgentSettings`; any other name is the backend of
that name from an installed plugin (its ``settings_model``). Regenerate after changing a
setting::

    python -m wrktalk_agent.settings_doc docs/operator.md           # rewrite in place
    python -m wrktalk_agent.settings_doc --check docs/operator.md   # exit 1 if stale

``tests/test_docs.py`` fails when the file differs from what this module renders.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, NoDecode

from wrktalk_agent.config import AgentSettings

__all__ = ["env_names", "render_settings_table", "update_document"]

#: Defaults computed on the machine that renders the docs; shown as what they mean.
#: (Paths under the temp directory are handled generically: ``$TMPDIR/...``.)
_MACHINE_DEPENDENT: dict[tuple[type[BaseSettings], str], str] = {
    (AgentSettings, "agent_id"): "`<hostname>-<pid>`",
    (AgentSettings, "work_dir"): "`/var/lib/wrktalk-agent/work` as root, else "
    "`$XDG_STATE_HOME/wrktalk-agent/work`",
}

_BLOCK = re.compile(
    r"(<!-- settings:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /settings:(?P=name) -->)",
    re.DOTALL,
)


def env_names(model: type[BaseSettings], field_name: str) -> list[str]:
    """The environment variables that set ``field_name`` (an alias replaces the prefix)."""
    info = model.model_fields[field_name]
    alias = info.validation_alias or info.alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str)]
    prefix = str(model.model_config.get("env_prefix", ""))
    return [f"{prefix}{field_name}".upper()]


def all_env_names(model: type[BaseSettings]) -> set[str]:
    return {name for field in model.model_fields for name in env_names(model, field)}


def render_settings_table(model: type[BaseSettings]) -> str:
    """A markdown table: variable, type, default, description; one row per field."""
    rows = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        variables = "<br>".join(f"`{v}`" for v in env_names(model, name))
        description = _escape_tags(info.description or "")
        cells = (variables, _type(info), _default(model, name, info), description)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def update_document(text: str, models: dict[str, type[BaseSettings]]) -> str:
    """``text`` with every settings block re-rendered; a block naming an unknown model is
    left as it is (the caller decides whether that is an error)."""

    def replace(match: re.Match[str]) -> str:
        model = models.get(match["name"])
        if model is None:
            return match[0]
        return match[1] + render_settings_table(model) + match[4]

    return _BLOCK.sub(replace, text)


def document_blocks(text: str) -> dict[str, str]:
    """Block name → current body, in document order."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def installed_models() -> dict[str, type[BaseSettings]]:
    """``agent`` plus every installed backend that declares a settings model."""
    from wrktalk_agent.plugins import PluginRegistry

    models: dict[str, type[BaseSettings]] = {"agent": AgentSettings}
    registry = PluginRegistry()
    for backends in registry.backends.values():
        for backend in backends.values():
            model = getattr(backend.cls, "settings_model", None)
            if model is not None:
                models[backend.name] = model
    return models


# -- cells -----------------------------------------------------------------------------
def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _escape_tags(text: str) -> str:
    """``<version>`` outside a code span would be swallowed as an HTML tag."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _type(info: FieldInfo) -> str:
    text = _type_name(info.annotation)
    if text.startswith("list") and NoDecode not in info.metadata:
        text = "JSON list"  # pydantic-settings' own decoding of complex values
    bounds = _bounds(info.metadata)
    return f"{text} {bounds}" if bounds else text


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # FilePath, DirectoryPath, ...
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (list, tuple, set, frozenset):
        return "list"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
        names: dict[type, str] = {
            bool: "boolean", int: "integer", float: "number", str: "text",
            Path: "path", SecretStr: "secret",
        }  # fmt: skip
        for base, name in names.items():
            if issubclass(annotation, base):
                return name
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: Iterable[Any]) -> str:
    lower = upper = ""
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower = f"≥ {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            lower = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            upper = f"≤ {item.le}"
        elif isinstance(item, annotated_types.Lt):
            upper = f"< {item.lt}"
    return ", ".join(b for b in (lower, upper) if b)


def _default(model: type[BaseSettings], name: str, info: FieldInfo) -> str:
    shown = _MACHINE_DEPENDENT.get((model, name))
    if shown is not None:
        return shown
    if info.default_factory is not None:
        factory = typing.cast(Callable[[], Any], info.default_factory)
        value = factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list | tuple):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    if value == "":
        return '`""`'
    if isinstance(value, Path) and value.is_relative_to(tempfile.gettempdir()):
        return f"`$TMPDIR/{value.relative_to(tempfile.gettempdir())}`"
    return f"`{value}`"


# -- command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wrktalk_agent.settings_doc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("document", type=Path, help="markdown file with settings blocks")
    parser.add_argument("--check", action="store_true", help="only report, exit 1 if stale")
    args = parser.parse_args(argv)
    text = args.document.read_text("utf-8")
    models = installed_models()
    unknown = [name for name in document_blocks(text) if name not in models]
    for name in unknown:
        print(f"warning: no installed model for block {name!r}; left unchanged", file=sys.stderr)
    updated = update_document(text, models)
    if updated == text:
        print(f"{args.document}: up to date")
        return 0
    if args.check:
        print(f"{args.document}: settings tables are stale; run without --check to update")
        return 1
    args.document.write_text(updated, "utf-8")
    print(f"{args.document}: updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
