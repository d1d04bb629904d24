"""PostgreSQL access: schema, queries, typed rows and the repository."""

from wrktalk_agent.db.repository import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    Repository,
    connect_once,
)

__all__ = ["CONNECTION_ERRORS", "DatabaseUnavailable", "Repository", "connect_once"]
