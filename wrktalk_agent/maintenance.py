"""Maintenance mode: the one place that switches it, records who owns it, and clears it.

The owner is recorded in ``deployment_config`` next to the flag: ``task:<id>`` for a
deploy or rollback, ``operator:<name>`` for a window an operator opened. The rules:

* A task records itself as owner *before* the proxy switches (a crash in between leaves a
  record that names a task, which its recovery clears); an operator's window stays the
  operator's, and the task leaves it on when it ends.
* A task switches maintenance off itself, while it still holds its lease, before its
  outcome is written; the record is cleared in the outcome's own transaction.
* A task whose agent died is recovered under a new lease by one agent, which clears the
  maintenance that task owned — the one-deployment slot stays taken meanwhile, so no new
  deploy can have switched it on in between.
* At start-up an agent clears only maintenance whose recorded owner is a task that has
  ended (a failed switch-off), holding the ``deployment_config`` row lock that every poll
  also takes — never maintenance that is merely found on.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog

from wrktalk_agent.db.models import MaintenanceState
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.guard import bounded, describe
from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent.services import Services


def task_owner(task_id: UUID) -> str:
    return f"task:{task_id}"


def operator_owner(name: str) -> str:
    return f"operator:{name}"


def describe_owner(state: MaintenanceState) -> str:
    """E.g. ``task 1b2c… (deploy 1.2.0)`` or ``operator alice (db migration)``."""
    if not state.owner:
        return "nobody recorded"
    kind, _, who = state.owner.partition(":")
    text = f"{kind} {who}".strip()
    return f"{text} ({state.reason})" if state.reason else text


async def switch_on(services: Services, reason: str) -> None:
    """Switch the proxy on (the caller recorded the owner first)."""
    if services.maintenance is not None:
        # the handler's own log lines name it, not the task's deployer
        with structlog.contextvars.bound_contextvars(plugin=services.maintenance.name):
            await bounded(
                services.maintenance.enable(reason),
                services.settings.backend_timeout,
                f"maintenance handler {services.maintenance.name!r} enable",
            )


async def switch_off(services: Services) -> None:
    """Switch the proxy back (the record is cleared by the caller's transaction)."""
    if services.maintenance is not None:
        with structlog.contextvars.bound_contextvars(plugin=services.maintenance.name):
            await bounded(
                services.maintenance.disable(),
                services.settings.backend_timeout,
                f"maintenance handler {services.maintenance.name!r} disable",
            )


async def reconcile_at_startup(services: Services, log: Any) -> None:
    """Clear maintenance left by a task that has ended; leave everything else as found."""
    handler: MaintenanceHandler | None = services.maintenance
    # Polls take this row lock too: no claim can switch maintenance on meanwhile.
    async with services.repo.locked_maintenance() as record:
        state = await record.state()
        if not state.enabled:
            if handler is not None and await _live_status(handler, services, log):
                log.warning(
                    "maintenance.unrecorded",
                    detail="the proxy is in maintenance but no owner is recorded: left on",
                )
            return
        task_id = state.owner_task
        if task_id is None:
            log.info("maintenance.kept", owner=describe_owner(state))
            return
        status = await record.task_status(task_id)
        if status == "inProgress":
            return  # its agent, or the agent recovering it, owns it
        try:
            await switch_off(services)
        except BackendError as exc:
            log.error("maintenance.disable_failed", error=str(exc), owner=state.owner)
            return
        assert state.owner is not None  # it names a task
        await record.clear(state.owner)
        log.info(
            "maintenance.cleared",
            why=f"left on by task {task_id}, which has ended ({status or 'deleted'})",
        )


async def _live_status(handler: MaintenanceHandler, services: Services, log: Any) -> bool:
    try:
        return bool(
            await bounded(
                handler.status(),
                services.settings.backend_timeout,
                f"maintenance handler {handler.name!r} status",
            )
        )
    except BackendError as exc:
        log.warning("maintenance.status_failed", error=describe(exc))
        return False


async def operator_switch(
    repo: Repository,
    handler: MaintenanceHandler | None,
    *,
    enabled: bool,
    who: str,
    reason: str | None,
    timeout: float,
    force: bool = False,
) -> None:
    """``maintenance on|off`` from the CLI: switch and record under the row lock. An
    operator's window outlives any task; switching off a running task's maintenance is
    refused unless ``force``."""
    async with repo.locked_maintenance() as record:
        state = await record.state()
        if not enabled and state.enabled and not force and state.owner_task is not None:
            status = await record.task_status(state.owner_task)
            if status == "inProgress":
                raise BackendError(
                    f"task {state.owner_task} is running and owns maintenance mode; it "
                    "switches it off when it ends (--force switches it off now)"
                )
        if handler is not None:
            call = handler.enable(reason or "operator") if enabled else handler.disable()
            await bounded(call, timeout, f"maintenance handler {handler.name!r}")
        await record.record_operator(enabled, operator_owner(who), reason)
