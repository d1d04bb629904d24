"""Where the agent's settings come from besides ``WRKTALK_AGENT_*`` variables: secrets
mounted as files (``*_FILE``) and libpq's ``PG*`` variables; and a warning for each
``WRKTALK_AGENT_*`` name nothing reads (a typo is otherwise silently ignored)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class SecretFileError(ValueError):
    """A ``*_FILE`` variable names a file that cannot be read (one line, no traceback)."""


#: ``VARIABLE_FILE`` → the core field it fills (Kubernetes/Docker secrets mounted as files)
SECRET_FILES: dict[str, str] = {
    "WRKTALK_AGENT_DB_PASSWORD_FILE": "db_password",
    "WRKTALK_AGENT_DATABASE_URL_FILE": "database_url",
}
#: the same for plugin settings: ``VARIABLE_FILE`` → (backend name, field)
PLUGIN_SECRET_FILES: dict[str, tuple[str, str]] = {
    "WRKTALK_AGENT_SMTP_PASSWORD_FILE": ("smtp", "password"),
}
#: libpq's variables, used when the WRKTALK_AGENT_DB_* one is not set
LIBPQ_VARIABLES: dict[str, str] = {
    "PGHOST": "db_host",
    "PGPORT": "db_port",
    "PGDATABASE": "db_name",
    "PGUSER": "db_user",
    "PGPASSWORD": "db_password",
    "PGSSLMODE": "db_ssl_mode",
}
#: read by the image's entrypoint, not by the settings models
OTHER_VARIABLES = frozenset({"WRKTALK_AGENT_SKIP_CHECK"})


def read_secret_file(variable: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The content of the file ``variable`` names (one trailing newline stripped), or
    ``None`` when the variable is unset. The direct variable and its ``_FILE`` variant
    together are refused: which one wins would be a guess."""
    environ = os.environ if environ is None else environ
    path = environ.get(variable)
    if path is None:
        return None
    direct = variable.removesuffix("_FILE")
    if environ.get(direct) is not None:
        raise SecretFileError(f"{direct} and {variable} are both set; keep one")
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SecretFileError(f"{variable}: cannot read {path}: {reason}") from None
    return text[:-1] if text.endswith("\n") else text


def apply_secret_files(data: dict[str, Any]) -> dict[str, Any]:
    for variable, field_name in SECRET_FILES.items():
        value = read_secret_file(variable)
        if value is not None:
            data = {**data, field_name: value}
    return data


def apply_libpq_environment(data: dict[str, Any]) -> dict[str, Any]:
    """PGHOST, PGPORT, ... as libpq reads them, below the WRKTALK_AGENT_DB_* variables
    (and ignored when WRKTALK_AGENT_DATABASE_URL is set)."""
    if data.get("database_url") is not None:
        return data
    filled = dict(data)
    for variable, field_name in LIBPQ_VARIABLES.items():
        value = os.environ.get(variable)
        if value and filled.get(field_name) is None:
            filled[field_name] = value
    return filled


def plugin_secret_overrides() -> dict[str, dict[str, Any]]:
    """Plugin settings read from ``*_FILE`` variables, as registry settings overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for variable, (backend, field_name) in PLUGIN_SECRET_FILES.items():
        value = read_secret_file(variable)
        if value is not None:
            overrides.setdefault(backend, {})[field_name] = value
    return overrides


def unknown_variable_warnings(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One line per ``WRKTALK_AGENT_*`` variable nothing reads, with the closest known
    name when there is one (a typo is otherwise silently ignored)."""
    lines = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("WRKTALK_AGENT_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        if close:
            lines.append(
                f"{variable} is not a setting of the agent or an installed plugin; "
                f"did you mean {close[0]}?"
            )
        else:
            lines.append(
                f"{variable} is not a setting of the agent or an installed plugin (ignored)"
            )
    return lines
