"""`wrktalk-agent plugins`: what is installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from wrktalk_agent.cli.common import (
    Failure,
    _format,
    load_settings,
    main,
    output_options,
    print_json,
    print_table,
)
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    pass


# -- plugins ---------------------------------------------------------------------------
@main.command()
@output_options
def plugins(output: str, as_json: bool) -> None:
    """List installed plugins: name, version, distribution, hooks, backends."""
    from wrktalk_agent.bootstrap import make_registry
    from wrktalk_agent.plugins import PluginError

    settings = load_settings()
    try:
        registry = make_registry(settings)
    except PluginError as exc:
        raise Failure(str(exc), exit_code=2) from None
    infos = registry.infos()
    fmt = _format(output, as_json)
    if fmt == "json":
        print_json([info.as_dict() for info in infos])
        return
    wide = fmt == "wide"
    columns = ["NAME", "DISTRIBUTION", "VERSION", "BACKENDS", "STATUS"]
    if wide:
        columns.insert(4, "HOOKS")
    rows = []
    for info in infos:
        status = "ok"
        if info.error:
            status = "failed to import" if info.error_kind == "import" else "invalid"
        row = [
            info.name,
            info.distribution or "module",
            info.version or "-",
            ", ".join(info.backends) or "-",
            status,
        ]
        if wide:
            row.insert(4, ", ".join(info.hooks) or "-")
        rows.append(row)
    print_table(columns, rows)
    declared = registry.declared_release_types()
    shown = [f"{t} ({', '.join(d)})" for t, d in declared.items()]
    shown += [f"any ({d})" for d in registry.any_type_deployers()]
    click.echo(f"release types: {visible(', '.join(shown) or 'none')}")
    for info in infos:
        if info.error:
            kind = "failed to import" if info.error_kind == "import" else "invalid"
            click.echo(f"warning: {visible(info.name)}: {kind}: {visible(info.error)}", err=True)
