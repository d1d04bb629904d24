"""Command-line parameters for releases: a version (checked like the agent checks it) and a
release type the installed deployers declare."""

from __future__ import annotations

from typing import Any

import click

from wrktalk_agent.cli.common import load_settings


def version_callback(_ctx: Any, _param: Any, value: str) -> str:
    from wrktalk_agent.interfaces import validate_version

    try:
        return validate_version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class ReleaseType(click.ParamType):
    """A release type the installed deployers declare (`plugins` lists them). When one of
    them takes any type (``chart_types = ()``, like script), another well-formed name is
    stored too, with a warning that only such deployers will take it."""

    name = "release type"

    def _registry(self) -> Any:
        from wrktalk_agent.bootstrap import make_registry

        return make_registry(load_settings())

    def shell_complete(self, ctx: Any, param: Any, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        try:
            declared = self._registry().declared_release_types()
        except Exception:  # completion never fails loudly
            return []
        return [CompletionItem(t) for t in declared if t.startswith(incomplete)]

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from wrktalk_agent.interfaces import RELEASE_TYPE_PATTERN
        from wrktalk_agent.plugins import PluginError

        text = str(value)
        if not RELEASE_TYPE_PATTERN.fullmatch(text):
            self.fail(
                f"{text!r} is not a release type name (1-40 characters from "
                "[0-9A-Za-z.+_-], starting with a letter or digit)",
                param,
                ctx,
            )
        try:
            registry = self._registry()
        except PluginError as exc:
            self.fail(str(exc), param, ctx)
        declared = registry.declared_release_types()
        if text in declared:
            return text
        names = ", ".join(declared) or "none"
        anything = registry.any_type_deployers()
        if not anything:
            self.fail(
                f"no installed deployer declares release type {text!r}; declared: {names}",
                param,
                ctx,
            )
        click.echo(
            f"warning: no installed deployer declares release type {text!r} (declared: "
            f"{names}); only {', '.join(anything)}, which take any type, will deploy it",
            err=True,
        )
        return text
