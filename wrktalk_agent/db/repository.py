"""The agent's door to PostgreSQL: a pool and one method per question or change.

:class:`Repository` joins one mixin per section, each in a module of its own over the
shared base (:mod:`~wrktalk_agent.db.base`: the pool, :meth:`~RepositoryBase.within`):

=========================================  ==============================================
:mod:`~wrktalk_agent.db.claims`            the poll's claim, takeover, the outcome
:mod:`~wrktalk_agent.db.leases`            lease renewal, failover check, agent process
:mod:`~wrktalk_agent.db.tasks`             tasks for the CLI and dashboard, timelines
:mod:`~wrktalk_agent.db.releases`          releases, artifact bytes, current/previous
:mod:`~wrktalk_agent.db.maintenance`       maintenance flag and holds, under their lock
:mod:`~wrktalk_agent.db.outbox`            the notification outbox, admins, SMTP
:mod:`~wrktalk_agent.db.reads`             metrics and dashboard reads
:mod:`~wrktalk_agent.db.checks`            schema, privileges, readiness
=========================================  ==============================================

Connections (pool, single, LISTEN) and the errors that mean "no database right now" are in
:mod:`~wrktalk_agent.db.connection`. SQL lives in :mod:`wrktalk_agent.db.queries` (one
module per section; the schema in :mod:`~wrktalk_agent.db.schema`); no module outside
:mod:`wrktalk_agent.db` issues a statement (a test enforces it). Two callers need more
than one call: the artifact download reads slices from one snapshot
(:meth:`Repository.artifact_chunks`), and maintenance's decisions call a handler while
holding the maintenance lock (:meth:`Repository.locked_maintenance`).

Every name callers import from here stays importable from here."""

from __future__ import annotations

from wrktalk_agent.db.base import DatabaseTimeout, RepositoryBase
from wrktalk_agent.db.checks import ChecksMixin
from wrktalk_agent.db.claims import ClaimsMixin
from wrktalk_agent.db.connection import (
    CONNECTION_ERRORS,
    NOT_PRIMARY_ERRORS,
    SERVER,
    AgentConnection,
    DatabaseUnavailable,
    ListenUnavailable,
    PoolerConnection,
    ServerWatch,
    connect_listener,
    connect_once,
    keepalive,
    listen_dsn,
    pooler_hint,
    pooler_mode,
)
from wrktalk_agent.db.leases import LeasesMixin
from wrktalk_agent.db.maintenance import MaintenanceMixin, MaintenanceRecord
from wrktalk_agent.db.outbox import OutboxMixin, address_problem
from wrktalk_agent.db.reads import ReadsMixin
from wrktalk_agent.db.releases import FlagChange, ReleasesMixin, apply_flags, promote_release
from wrktalk_agent.db.tasks import EventStatus, PendingEventLike, TasksMixin

__all__ = [
    "CONNECTION_ERRORS",
    "NOT_PRIMARY_ERRORS",
    "SERVER",
    "AgentConnection",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "EventStatus",
    "FlagChange",
    "ListenUnavailable",
    "MaintenanceRecord",
    "PendingEventLike",
    "PoolerConnection",
    "Repository",
    "RepositoryBase",
    "ServerWatch",
    "address_problem",
    "apply_flags",
    "connect_listener",
    "connect_once",
    "keepalive",
    "listen_dsn",
    "pooler_hint",
    "pooler_mode",
    "promote_release",
]


class Repository(
    ClaimsMixin,
    LeasesMixin,
    TasksMixin,
    ReleasesMixin,
    MaintenanceMixin,
    OutboxMixin,
    ReadsMixin,
    ChecksMixin,
):
    """All reads and writes of the agent, over an asyncpg pool. Every call the agent's
    loop makes is bounded (:meth:`within`): a server that stops answering costs at most
    ``DB_TIMEOUT``, never the time a dead TCP link takes to be noticed."""
