"""The task pipeline: one task, start to finish, as small steps driven by a short loop.

* :mod:`~wrktalk_agent.pipeline.run` — :class:`TaskRun`, the loop over the steps;
* :mod:`~wrktalk_agent.pipeline.steps` — one unit per step (resolve, artifact, changes,
  validate, prepare, maintenance, deploy, health, auto-rollback, outcome, notify);
* :mod:`~wrktalk_agent.pipeline.state` — the task's state the steps read and write;
* :mod:`~wrktalk_agent.pipeline.lease_run` — what every run under a lease shares
  (the run of a task, and a recovery, :mod:`wrktalk_agent.recovery`);
* :mod:`~wrktalk_agent.pipeline.timeline`, :mod:`~wrktalk_agent.pipeline.redaction`,
  :mod:`~wrktalk_agent.pipeline.outcome` — the timeline, the secrets, the written end.

The names below are importable from ``wrktalk_agent.pipeline`` as they always were.
"""

from wrktalk_agent.pipeline.lease_run import LeasedTask
from wrktalk_agent.pipeline.outcome import (
    ROLLBACK_FAILED_TOO,
    TaskOutcome,
    Verdict,
    both_causes,
    db_retrying,
    write_outcome,
)
from wrktalk_agent.pipeline.redaction import Secrets
from wrktalk_agent.pipeline.run import STEPS, TaskRun
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.steps.changes import MAX_CHANGE_LINES
from wrktalk_agent.pipeline.steps.live import ask_live, live_text
from wrktalk_agent.pipeline.timeline import DB_ERRORS, PendingEvent, Timeline
from wrktalk_agent.services import Services

__all__ = [
    "DB_ERRORS",
    "MAX_CHANGE_LINES",
    "ROLLBACK_FAILED_TOO",
    "STEPS",
    "LeasedTask",
    "PendingEvent",
    "Secrets",
    "Services",
    "StepFailed",
    "TaskOutcome",
    "TaskRun",
    "TaskState",
    "Timeline",
    "Verdict",
    "ask_live",
    "both_causes",
    "db_retrying",
    "live_text",
    "write_outcome",
]
