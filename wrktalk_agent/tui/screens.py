"""The screens besides the main one: the task detail (:mod:`.detail`) and the dialogs
(:mod:`.dialogs`), importable from here."""

from __future__ import annotations

from wrktalk_agent.tui.detail import (
    OUTPUT_TAIL_LINES,
    TaskDetailScreen,
    header_text,
    output_text,
    recovery_text,
    result_output,
    result_text,
    step_durations,
)
from wrktalk_agent.tui.dialogs import HELP, ConfirmDialog, DeployChoice, DeployDialog, HelpScreen

__all__ = [
    "HELP",
    "OUTPUT_TAIL_LINES",
    "ConfirmDialog",
    "DeployChoice",
    "DeployDialog",
    "HelpScreen",
    "TaskDetailScreen",
    "header_text",
    "output_text",
    "recovery_text",
    "result_output",
    "result_text",
    "step_durations",
]
