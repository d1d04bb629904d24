"""The nginx configuration that pairs with the flag file, rendered from the templates in
``snippets/`` so that the tests exercise exactly what operators install.

Two parts, because nginx wants them in different blocks: ``http`` (the admin networks and
exempt paths, as ``geo``/``map`` variables) and ``server`` (the flag test, the 503 and the
page). :func:`maintenance_page` is the HTML page the ``server`` part serves.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_FLAG_FILE",
    "DEFAULT_PAGE_FILE",
    "DEFAULT_RETRY_AFTER",
    "NginxSnippets",
    "maintenance_page",
    "render_snippets",
]

DEFAULT_FLAG_FILE = Path("/var/run/wrktalk/maintenance")
DEFAULT_PAGE_FILE = Path("/usr/share/wrktalk-agent/maintenance.html")
DEFAULT_EXEMPT_PATHS: tuple[str, ...] = ("/healthz",)
DEFAULT_RETRY_AFTER = 300

# Values end up inside nginx directives: anything that could end a directive, open a
# block or start a comment would let a setting rewrite the configuration.
_UNSAFE = re.compile(r"[\s;{}#'\"\\$]")


class _Template(string.Template):
    delimiter = "@@"  # nginx already owns `$`


@dataclass(frozen=True)
class NginxSnippets:
    """``http``: include once in ``http { }``; ``server``: include in each ``server { }``."""

    http: str
    server: str


def render_snippets(
    *,
    flag_file: Path | str = DEFAULT_FLAG_FILE,
    page_file: Path | str = DEFAULT_PAGE_FILE,
    admin_networks: Sequence[str] = (),
    exempt_paths: Sequence[str] = DEFAULT_EXEMPT_PATHS,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> NginxSnippets:
    """Render both parts; raise ``ValueError`` for a value nginx would misread.

    ``flag_file`` must match the agent's ``WRKTALK_AGENT_NGINX_FLAG_FILE`` as nginx sees
    it (mind volume mounts); ``page_file`` is where you put :func:`maintenance_page`.
    """
    networks = [_network(n) for n in admin_networks]
    paths = [_exempt_path(p) for p in exempt_paths]
    if retry_after < 0:
        raise ValueError(f"retry_after must be >= 0, got {retry_after}")
    if networks:
        network_lines = "\n".join(f"    {n} 1;" for n in networks)
    else:
        network_lines = "    # 192.0.2.0/24 1;  # example: your admin network"
    http = _template("maintenance-http.conf").substitute(
        admin_networks=network_lines,
        exempt_paths="\n".join(f"    {p} 1;" for p in paths),
    )
    server = _template("maintenance-server.conf").substitute(
        flag_file=_absolute_path(flag_file, "flag_file"),
        page_file=_absolute_path(page_file, "page_file"),
        retry_after=retry_after,
    )
    return NginxSnippets(http=http, server=server)


def maintenance_page() -> str:
    """The HTML page served with the 503 (shipped as ``snippets/maintenance.html``)."""
    return _resource("maintenance.html")


def _template(name: str) -> _Template:
    return _Template(_resource(name))


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath("snippets", name).read_text(encoding="utf-8")


def _absolute_path(value: Path | str, what: str) -> str:
    text = str(value)
    if not text.startswith("/") or _UNSAFE.search(text):
        raise ValueError(
            f"{what} must be an absolute path without spaces, quotes, ';', '{{', '}}', "
            f"'#' or '$': {text!r}"
        )
    return text


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError as exc:
        raise ValueError(f"admin network {value!r} is not an address or CIDR range") from exc


def _exempt_path(value: str) -> str:
    if not value.startswith("/") or _UNSAFE.search(value):
        raise ValueError(
            f"exempt path must start with '/' and contain no spaces, quotes, ';', "
            f"'{{', '}}', '#' or '$': {value!r}"
        )
    return value
