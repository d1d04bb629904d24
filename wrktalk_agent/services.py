"""What one agent works with: its settings, the database and the selected backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.interfaces import Deployer, MaintenanceHandler, Notifier


@dataclass
class Services:
    """The selected backends and what the pipeline needs around them."""

    settings: AgentSettings
    repo: Repository
    deployer: Deployer
    maintenance: MaintenanceHandler | None
    notifiers: Sequence[Notifier]
    trusted_keys: list[Any] = field(default_factory=list)
    #: the release types the installed deployers declare (``None``: one takes any type);
    #: the poll rejects a task whose release has another type
    release_types: tuple[str, ...] | None = None
