"""The HAProxy configuration that pairs with :class:`HaproxyMaintenance`, rendered from the
template in ``snippets/`` so that the tests exercise exactly what operators install."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from wrktalk_agent_haproxy.runtime_api import NAME_PATTERN

__all__ = [
    "DEFAULT_PAGE_FILE",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_SERVERS",
    "DEFAULT_SOCKET",
    "maintenance_page",
    "render_config",
]

DEFAULT_SOCKET = "/run/haproxy/admin.sock"
DEFAULT_PAGE_FILE = Path("/etc/haproxy/errors/wrktalk-maintenance.html")
DEFAULT_RETRY_AFTER = 300
#: Placeholders for the operator's own servers (documentation addresses, RFC 5737).
DEFAULT_SERVERS: tuple[tuple[str, str], ...] = (
    ("app1", "192.0.2.11:8080"),
    ("app2", "192.0.2.12:8080"),
)

# Values end up as words of HAProxy directives: whitespace or '#' would split or end
# them, quotes and '$' would be interpreted.
_UNSAFE = re.compile(r"[\s#'\"\\$]")


class _Template(string.Template):
    delimiter = "@@"  # HAProxy already uses `$` for environment variables


def render_config(
    *,
    socket: str = DEFAULT_SOCKET,
    backend: str = "wrktalk",
    servers: Sequence[tuple[str, str]] = DEFAULT_SERVERS,
    page_file: Path | str = DEFAULT_PAGE_FILE,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> str:
    """Render the ``global`` and ``backend`` sections; raise ``ValueError`` for a value
    HAProxy would misread. ``servers`` are ``(name, address)`` pairs; each gets a health
    check."""
    if retry_after < 0:
        raise ValueError(f"retry_after must be >= 0, got {retry_after}")
    for name in (backend, *(name for name, _ in servers)):
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid HAProxy backend or server name {name!r}")
    return _Template(_resource("haproxy.cfg")).substitute(
        socket=_word(socket, "socket"),
        backend=backend,
        page_file=_word(str(page_file), "page_file"),
        retry_after=retry_after,
        servers="\n".join(
            f"    server {name} {_word(address, 'server address')} check"
            for name, address in servers
        ),
    )


def maintenance_page() -> str:
    """The HTML page HAProxy serves with the 503 (``snippets/maintenance.html``); put it
    at ``page_file``. HAProxy reads it once at start-up and needs it under its buffer
    size (``tune.bufsize``, 16 kB by default, headers included)."""
    return _resource("maintenance.html")


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath("snippets", name).read_text(encoding="utf-8")


def _word(value: str, what: str) -> str:
    if not value or _UNSAFE.search(value):
        raise ValueError(f"{what} must be one word without quotes, '#' or '$': {value!r}")
    return value
