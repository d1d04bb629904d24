"""``wrktalk-agent check``: everything the agent needs, one line per check.

Every check runs even when an earlier one failed, so an operator fixes all problems in
one round; a failing check is a line, never a traceback.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db import DatabaseUnavailable, Repository
from wrktalk_agent.db.repository import pooler_mode
from wrktalk_agent.interfaces import CheckResult, PluginContext, Recipient, SmtpConfig
from wrktalk_agent.plugins import Kind, PluginError, PluginRegistry, SettingsError
from wrktalk_agent.signing import load_trusted_keys
from wrktalk_agent.workdir import WorkDirError, check_work_dir

__all__ = ["AGENT_PRIVILEGES", "blocks_deploys", "format_checks", "run_checks"]

#: What `wrktalk-agent run` does to each table, and why (named when missing).
AGENT_PRIVILEGES: tuple[tuple[str, str, str], ...] = (
    ("agent_task", "SELECT", "finding due tasks"),
    ("agent_task", "UPDATE", "claiming, heartbeating and finishing tasks"),
    ("agent_task_event", "SELECT", "task timelines"),
    ("agent_task_event", "INSERT", "recording each step"),
    ("release_artifact", "SELECT", "reading releases"),
    ("release_artifact", "UPDATE", "marking the current and previous release"),
    ("deployment_config", "SELECT", "the SMTP settings and the maintenance flag"),
    ("deployment_config", "UPDATE", "recording polls and the maintenance flag"),
    ("agent_instance", "SELECT", "the agents list"),
    ("agent_instance", "INSERT", "registering this agent"),
    ("agent_instance", "UPDATE", "recording this agent's polls"),
    ("agent_failover", "SELECT", "the failover quiet period"),
    ("agent_failover", "INSERT", "recording the primary's timeline"),
    ("agent_failover", "UPDATE", "recording the primary's timeline"),
    ("admin", "SELECT", "who to notify"),
    ("agent_notification", "SELECT", "finding notifications to deliver"),
    ("agent_notification", "INSERT", "promising notifications with each outcome"),
    ("agent_notification", "UPDATE", "recording deliveries"),
    ("agent_notification_recipient", "SELECT", "who still waits for a notification"),
    ("agent_notification_recipient", "INSERT", "recording each recipient's delivery"),
    ("agent_notification_recipient", "UPDATE", "recording each recipient's delivery"),
    ("agent_maintenance_hold", "SELECT", "who holds maintenance mode"),
    ("agent_maintenance_hold", "INSERT", "holding maintenance mode for a task or an operator"),
    ("agent_maintenance_hold", "UPDATE", "an operator's new reason for a window"),
    ("agent_maintenance_hold", "DELETE", "releasing a hold"),
)


class _UnreachableDirectory:
    """The plugins' view of the database when it is down: every question fails the same
    way, so a notifier check that needs the SMTP config says why it could not get it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def active_admins(self) -> list[Recipient]:
        raise DatabaseUnavailable(self.reason)

    async def smtp_config(self) -> SmtpConfig:
        raise DatabaseUnavailable(self.reason)


async def run_checks(
    settings: AgentSettings,
    registry: PluginRegistry,
    context: PluginContext | None = None,
    *,
    db_timeout: float = 10.0,
    plugin_timeout: float = 60.0,
) -> list[CheckResult]:
    """Run every preflight check; ``context`` defaults to one whose directory reads the
    configured database. ``plugin_timeout`` bounds each plugin's own ``check()``."""
    results: list[CheckResult] = []
    repo: Repository | None = None
    unreachable = ""
    # Two connections are plenty for a check; the configured pool may be larger.
    small = settings.model_copy(update={"db_pool_min_size": 1, "db_pool_max_size": 2})
    try:
        try:
            repo = await Repository.connect(small, timeout=db_timeout)
        except DatabaseUnavailable as exc:
            unreachable = str(exc)
        except Exception as exc:  # e.g. an unknown role: still one line, not a traceback
            unreachable = f"cannot connect to PostgreSQL at {settings.server_label()}: {exc}"
        # the database line also says which way the agent talks to PostgreSQL: direct, or
        # PgBouncer with or without a direct LISTEN connection
        mode = pooler_mode(settings)
        if repo is None:
            results.append(CheckResult("database", False, f"{unreachable}; {mode}"))
            results.append(CheckResult("schema", False, "not checked: database unreachable"))
            results.append(CheckResult("privileges", False, "not checked: database unreachable"))
        else:
            detail = (
                f"PostgreSQL at {settings.server_label()} reachable "
                f"({settings.masked_dsn()}); {mode}"
            )
            results.append(CheckResult("database", True, detail))
            results.append(await _schema_check(repo))
            results.extend(await _release_type_rules(repo))
            results.append(await _privileges_check(repo))

        if context is None:
            context = PluginContext(
                agent_id=settings.agent_id,
                installation=settings.installation_name,
                work_dir=settings.work_dir,
                directory=repo if repo is not None else _UnreachableDirectory(unreachable),
            )
        for kind, name in _selected_backends(settings):
            results.extend(await _plugin_checks(registry, kind, name, context, plugin_timeout))
        results.append(_work_dir_check(settings.work_dir, settings.work_dir_check_parents))
        results.append(_trusted_keys_check(settings.trusted_keys))
    finally:
        if repo is not None:
            await repo.close()
    return results


async def _schema_check(repo: Repository) -> CheckResult:
    try:
        problems = await repo.check_schema()
    except Exception as exc:
        return CheckResult("schema", False, f"could not inspect the schema: {exc}")
    if problems:
        return CheckResult("schema", False, "; ".join(problems) + " (run `wrktalk-agent db init`)")
    return CheckResult("schema", True, "all tables, columns, indexes and the trigger present")


async def _release_type_rules(repo: Repository) -> list[CheckResult]:
    """A backend's own CHECK on release types: reported (a warning), never changed."""
    try:
        rules = await repo.release_type_constraints()
    except Exception as exc:
        return [CheckResult("release types", False, f"could not inspect constraints: {exc}")]
    return [
        CheckResult(
            "release types",
            False,
            f"limited by constraint {name} CHECK {expression} (not the agent's; "
            "`db init` leaves it): a release of another type cannot be stored",
        )
        for name, expression in rules
    ]


async def _privileges_check(repo: Repository) -> CheckResult:
    """Ask PostgreSQL what the role may do (has_table_privilege and friends) instead of
    finding out mid-deploy. LISTEN needs no privilege."""
    try:
        granted, other = await repo.table_privileges(
            [(table, privilege) for table, privilege, _ in AGENT_PRIVILEGES]
        )
    except Exception as exc:
        return CheckResult("privileges", False, f"could not ask for privileges: {exc}")
    role = other["role_name"]
    missing: list[str] = []
    grants: dict[str, list[str]] = {}
    for allowed, (table, privilege, why) in zip(granted, AGENT_PRIVILEGES, strict=True):
        if allowed is False:  # None: the table is missing (the schema check says so)
            missing.append(f"{privilege} on {table} ({why})")
            grants.setdefault(table, []).append(privilege)
    if other["schema_usage"] is False:
        missing.append("USAGE on the schema (every table)")
    if other["event_sequence_usage"] is False:
        missing.append("USAGE on the sequence of agent_task_event.id (recording each step)")
        grants.setdefault(f"SEQUENCE {other['event_sequence']}", []).append("USAGE")
    for column, function in (
        ("advisory_lock", "pg_try_advisory_lock"),
        ("advisory_unlock", "pg_advisory_unlock"),
    ):
        if other[column] is False:
            missing.append(f"EXECUTE on {function}(bigint) (advisory locks)")
    if not missing:
        return CheckResult(
            "privileges", True, f"role {role} may do everything the agent does (LISTEN included)"
        )
    if other["schema_usage"] is False:
        grants.setdefault(f"SCHEMA {other['schema_name']}", []).append("USAGE")
    hint = "; ".join(
        f"GRANT {', '.join(privileges)} ON {table} TO {role}"
        for table, privileges in grants.items()
    )
    detail = f"role {role} lacks " + ", ".join(missing) + (f" ({hint})" if hint else "")
    return CheckResult("privileges", False, detail)


def _selected_backends(settings: AgentSettings) -> list[tuple[Kind, str]]:
    selected: list[tuple[Kind, str]] = [("deployer", settings.deployer_name)]
    if settings.maintenance_name is not None:
        selected.append(("maintenance handler", settings.maintenance_name))
    selected.extend(("notifier", name) for name in settings.notifiers)
    return selected


async def _plugin_checks(
    registry: PluginRegistry, kind: Kind, name: str, context: PluginContext, timeout: float
) -> list[CheckResult]:
    label = f"{kind} {name}"
    try:
        backend = registry.instantiate(kind, name, context)
    except SettingsError as exc:
        return [CheckResult(label, False, "; ".join(exc.lines))]
    except PluginError as exc:
        return [CheckResult(label, False, str(exc))]
    except Exception as exc:  # instantiate wraps most errors; third-party code may still surprise
        return [CheckResult(label, False, f"could not start: {type(exc).__name__}: {exc}")]
    try:
        async with asyncio.timeout(timeout):
            lines = list(await backend.check())
    except TimeoutError:
        return [CheckResult(label, False, f"check() did not finish within {timeout:g}s")]
    except Exception as exc:
        return [CheckResult(label, False, f"check() raised {type(exc).__name__}: {exc}")]
    if not lines:
        return [CheckResult(label, True, "loaded; the plugin has nothing to check")]
    results = []
    for line in lines:
        if isinstance(line, CheckResult):
            results.append(CheckResult(f"{label}: {line.name}", line.ok, line.detail))
        else:
            results.append(
                CheckResult(label, False, f"check() returned {line!r}, not a CheckResult")
            )
    return results


def _work_dir_check(work_dir: Path, check_parents: bool = True) -> CheckResult:
    try:
        check_work_dir(work_dir, check_parents=check_parents)
    except WorkDirError as exc:
        return CheckResult("work dir", False, str(exc))
    try:
        with tempfile.NamedTemporaryFile(dir=work_dir, prefix=".check-") as probe:
            probe.write(b"wrktalk-agent preflight\n")
            probe.flush()
        free = shutil.disk_usage(work_dir).free
    except OSError as exc:
        return CheckResult("work dir", False, f"{work_dir} is not writable: {exc.strerror or exc}")
    mine = "private to the agent" if check_parents else "the agent's own (parents not checked)"
    return CheckResult(
        "work dir", True, f"{work_dir} {mine}, writable, {free / 1024**3:.1f} GiB free"
    )


def _trusted_keys_check(entries: Sequence[str]) -> CheckResult:
    if not entries:
        return CheckResult("trusted keys", True, "none configured: signatures are not verified")
    try:
        keys = load_trusted_keys(entries)
    except ValueError as exc:
        return CheckResult("trusted keys", False, str(exc))
    return CheckResult("trusted keys", True, f"{len(keys)} Ed25519 key(s) loaded")


def blocks_deploys(result: CheckResult) -> bool:
    """Whether a failure of this check keeps deploys from working. A notifier only
    degrades them: the outcome is recorded, the mail waits in the outbox and is retried,
    so a mail server outage must not keep the agent (and its rollbacks) from starting."""
    return not result.name.startswith("notifier ") and result.name != "release types"


def format_checks(results: Sequence[CheckResult]) -> str:
    """A table for humans: status, check, detail; and a closing summary line."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for result in results:
        detail = " ".join(result.detail.split())  # multi-line details stay on their row
        status = "ok" if result.ok else "FAIL" if blocks_deploys(result) else "WARN"
        lines.append(f"{status:<4}  {result.name:<{width}}  {detail}".rstrip())
    failed = sum(not r.ok and blocks_deploys(r) for r in results)
    warned = sum(not r.ok and not blocks_deploys(r) for r in results)
    warning = (
        f"{warned} warning(s): notifications are delayed (kept in the outbox), deploys work"
        if warned
        else ""
    )
    if failed:
        lines.append(
            f"{failed} of {len(results)} checks failed" + (f"; {warning}" if warned else "")
        )
    elif warned:
        lines.append(f"no check that blocks deploys failed; {warning}")
    else:
        lines.append(f"all {len(results)} checks passed")
    return "\n".join(lines)
