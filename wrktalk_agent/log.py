"""structlog setup: JSON lines in containers, a readable console on a TTY."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from wrktalk_agent.safe_text import storable, visible
from wrktalk_agent.secrets import MASK, is_secret_name, mask_mapping, mask_text

#: What structlog imports of rich (when rich is installed: the TUI brings it) for traceback
#: formatters the agent never uses — format_exc_info below turns tracebacks into text
#: before a renderer sees them. They cost more to import than structlog itself, on every
#: start of the agent and of the dashboard, so they are kept out while structlog loads
#: (``import`` of a module set to None fails, and structlog falls back).
_RICH_PARTS = ("rich", "rich.traceback", "rich.pretty")

if "structlog" in sys.modules:
    import structlog
else:
    # rich itself may already be loaded (by Textual): then only its parts are kept out
    _blocked = [name for name in _RICH_PARTS if name not in sys.modules]
    for _name in _blocked:
        sys.modules[_name] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        for _name in _blocked:
            del sys.modules[_name]


def redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: the values of secret names (:mod:`wrktalk_agent.secrets`)
    are masked, and strings and nested values lose URL passwords and secret assignments."""
    for key, value in list(event_dict.items()):
        if value is None:
            continue
        if is_secret_name(key):
            event_dict[key] = MASK
        elif isinstance(value, str):
            event_dict[key] = mask_text(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = mask_mapping(value)
    return event_dict


class _Redactor(Protocol):
    def redact(self, text: str) -> str: ...


_REDACTOR: ContextVar[_Redactor | None] = ContextVar("wrktalk_log_redactor", default=None)


@contextmanager
def redacting(redactor: _Redactor) -> Iterator[None]:
    """Log lines written inside this block (in this task) have the release's secrets
    masked by ``redactor`` (a :class:`wrktalk_agent.redact.Redactor`), tracebacks too."""
    token = _REDACTOR.set(redactor)
    try:
        yield
    finally:
        _REDACTOR.reset(token)


def redact_known_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    redactor = _REDACTOR.get()
    if redactor is not None:
        for key, value in list(event_dict.items()):
            if isinstance(value, str):
                event_dict[key] = redactor.redact(value)
    return event_dict


def storable_fields(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every text of a log line as :func:`~wrktalk_agent.safe_text.storable` text: NUL,
    undecodable bytes and lone surrogates escaped (a log shipper may store the line in a
    database too), each value bounded. Runs after the secrets are masked."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str | bytes):
            event_dict[key] = storable(value)
    return event_dict


def escape_for_console(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Console lines quote tool output and database values: control characters (ANSI
    escapes, carriage returns, bidi overrides) become visible escapes so a log line can
    neither restyle the operator's terminal nor forge another line. JSON lines need no
    such step: the JSON encoder escapes control characters itself."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = visible(value, newlines=key == "exception")
    return event_dict


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (not when logging was set up:
    a test harness or a daemoniser may swap it, and a closed stream must not break the
    agent's logging)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def no_color() -> bool:
    """NO_COLOR (https://no-color.org): set and not empty means no colours, anywhere."""
    return bool(os.environ.get("NO_COLOR"))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty() and not no_color(),
            exception_formatter=structlog.dev.plain_traceback,
        )
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    rendering: list[Any] = [
        structlog.processors.format_exc_info,
        redact_known_secrets,
        storable_fields,
        *([escape_for_console] if use_console else []),
        renderer,
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(shared, rendering, numeric_level)


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler as ours, so a second configure replaces it."""


def _route_standard_logging(shared: list[Any], rendering: list[Any], level: int) -> None:
    """Records of the standard library and of libraries (asyncio's "Task exception was
    never retrieved", asyncpg, aiohttp) go through the same processors: one JSON line
    each, the traceback inside it, secrets masked — never a bare traceback on stderr."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = _StructlogHandler(_CurrentStderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(level, logging.INFO))  # library debug chatter stays out
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception


def _log_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    logging.getLogger("python").error(
        "unraisable exception in %r: %s",
        unraisable.object,
        unraisable.err_msg or "",
        exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None,
    )


def _log_thread_exception(args: Any) -> None:
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("python").error(
        "exception in thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def get_logger(**bindings: Any) -> Any:
    return structlog.get_logger("wrktalk_agent").bind(**bindings)
