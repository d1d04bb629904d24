"""Putting an agent together: settings → plugins → database → backends."""

from __future__ import annotations

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.interfaces import PluginContext
from wrktalk_agent.plugins import PluginError, PluginRegistry
from wrktalk_agent.services import Services
from wrktalk_agent.signing import load_trusted_keys
from wrktalk_agent.workdir import WorkDirError, check_work_dir


class StartupError(Exception):
    """The agent cannot start; ``lines`` say why, ``exit_code`` is 2 for configuration."""

    def __init__(self, lines: list[str], exit_code: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.exit_code = exit_code


def make_registry(settings: AgentSettings) -> PluginRegistry:
    from wrktalk_agent.config import SecretFileError, plugin_secret_overrides

    try:
        overrides = plugin_secret_overrides()  # WRKTALK_AGENT_SMTP_PASSWORD_FILE
    except SecretFileError as exc:
        raise PluginError(str(exc)) from None
    return PluginRegistry(settings.extra_plugins, settings_overrides=overrides)


def plugin_context(settings: AgentSettings, repo: Repository) -> PluginContext:
    return PluginContext(
        agent_id=settings.agent_id,
        installation=settings.installation_name,
        work_dir=settings.work_dir,
        directory=repo,
    )


def select_backends(
    settings: AgentSettings, registry: PluginRegistry, context: PluginContext
) -> tuple[object, object | None, list[object]]:
    """Instantiate the configured deployer, maintenance handler and notifiers."""
    errors: list[str] = []
    deployer = maintenance = None
    notifiers: list[object] = []
    try:
        deployer = registry.instantiate("deployer", settings.deployer_name, context)
    except PluginError as exc:
        errors.append(str(exc))
    if settings.maintenance_name is not None:
        try:
            maintenance = registry.instantiate(
                "maintenance handler", settings.maintenance_name, context
            )
        except PluginError as exc:
            errors.append(str(exc))
    for name in settings.notifiers:
        try:
            notifiers.append(registry.instantiate("notifier", name, context))
        except PluginError as exc:
            errors.append(str(exc))
    if errors:
        raise StartupError(errors, exit_code=2)
    return deployer, maintenance, notifiers


async def open_services(
    settings: AgentSettings, registry: PluginRegistry | None = None, *, check_schema: bool = True
) -> Services:
    """Validate plugins and keys, connect, check the schema; the caller closes ``repo``."""
    registry = registry or make_registry(settings)
    try:
        keys = load_trusted_keys(settings.trusted_keys)
    except ValueError as exc:
        raise StartupError([f"WRKTALK_AGENT_TRUSTED_KEYS: {exc}"], exit_code=2) from None
    try:  # before anything is written there or deleted from it
        check_work_dir(settings.work_dir, check_parents=settings.work_dir_check_parents)
    except WorkDirError as exc:
        raise StartupError([str(exc)], exit_code=2) from None
    repo = await Repository.connect(settings)
    try:
        if check_schema:
            problems = await repo.check_schema()
            if problems:
                raise StartupError(
                    ["the database schema is incomplete (run `wrktalk-agent db init`):"]
                    + [f"  - {p}" for p in problems]
                )
        deployer, maintenance, notifiers = select_backends(
            settings, registry, plugin_context(settings, repo)
        )
    except BaseException:
        await repo.close()
        raise
    return Services(
        settings=settings,
        repo=repo,
        deployer=deployer,  # type: ignore[arg-type]
        maintenance=maintenance,  # type: ignore[arg-type]
        notifiers=notifiers,  # type: ignore[arg-type]
        trusted_keys=keys,
        release_types=registry.release_types(),
    )
