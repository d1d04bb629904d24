"""The backend contract, declared once per kind.

Each kind of backend (deployer, maintenance handler, notifier) is a :class:`Contract`:
the hook that registers it and its methods, required and optional, each with its
signature and what the core does with its result or failure. Everything else follows
from these three declarations:

- the registry (:mod:`wrktalk_agent.plugins`) checks a registered class against them
  (required methods present, every declared method ``async``, a public coroutine whose
  name is a near miss of a declared one refused with a hint);
- the core finds an optional method only through :meth:`Contract.optional_method`, which
  refuses a name the contract does not declare (so a typo in the core fails at once);
- ``docs/plugins.md`` carries one table per kind that a test compares with
  :meth:`Contract.markdown_table`;
- the optional base classes in :mod:`wrktalk_agent.interfaces` leave abstract exactly
  the required methods other than ``check`` (a test checks that too).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CONTRACTS", "Contract", "Kind", "Method", "contract_for"]

Kind = Literal["deployer", "maintenance handler", "notifier"]


@dataclass(frozen=True)
class Method:
    """One method of a backend: ``signature`` as a plugin author writes it (without
    ``self``), and ``core``: when the core calls it and what it does with the result or a
    failure."""

    name: str
    signature: str
    required: bool
    core: str


@dataclass(frozen=True)
class Contract:
    kind: Kind
    #: the pluggy hook that registers backends of this kind
    hook: str
    methods: tuple[Method, ...]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods if m.required)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods if not m.required)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods)

    def method(self, name: str) -> Method:
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(f"{name!r} is no {self.kind} method; declared: {', '.join(self.names)}")

    def optional_method(self, backend: object, name: str) -> Callable[..., Any] | None:
        """The backend's optional method ``name`` (bound), or ``None`` when its class does
        not define it. ``name`` must be declared optional here: asking for anything else
        is a bug in the core and raises ``KeyError``."""
        if self.method(name).required:
            raise KeyError(f"{name!r} is a required {self.kind} method, not an optional one")
        found = getattr(backend, name, None)
        return found if callable(found) else None

    def near_misses(self, cls: type) -> list[str]:
        """Public coroutine methods of ``cls`` that the contract does not declare but
        whose name is close to a declared method the class lacks (``valdiate``,
        ``live_releases``): the core would never call them."""
        problems = []
        for attr in sorted(dir(cls)):
            if attr.startswith("_") or attr in self.names:
                continue
            if not inspect.iscoroutinefunction(getattr(cls, attr, None)):
                continue
            missing = [m for m in self.names if not _defines(cls, m)]
            close = difflib.get_close_matches(attr, missing, n=1, cutoff=0.8)
            if close:
                problems.append(
                    f"method {attr!r} is not part of the {self.kind} contract, so the core "
                    f"never calls it (did you mean {close[0]!r}?)"
                )
        return problems

    def markdown_table(self) -> str:
        """The table docs/plugins.md shows for this kind (a test compares them)."""
        lines = ["| Method | Required | What the core does |", "| --- | --- | --- |"]
        for m in self.methods:
            lines.append(f"| `{m.signature}` | {'yes' if m.required else 'no'} | {m.core} |")
        return "\n".join(lines)


def _defines(cls: type, name: str) -> bool:
    function = getattr(cls, name, None)
    return callable(function) and not getattr(function, "__isabstractmethod__", False)


_CHECK = Method(
    "check",
    "async check() -> Sequence[CheckResult]",
    True,
    "Called only by `wrktalk-agent check`: each `CheckResult` is a line of its report. An "
    "exception or a hang is a failed line, never a crash. The base classes report nothing.",
)

DEPLOYER = Contract(
    kind="deployer",
    hook="wrktalk_register_deployers",
    methods=(
        _CHECK,
        Method(
            "deploy",
            "async deploy(request: DeployRequest) -> DeployOutcome",
            True,
            "Applies `request.release`, maintenance on. The outcome's `output` (a bounded "
            "tail) and `details` go to the task result. `DeployError` fails the task; with "
            "`system_changed` (the default) and auto-rollback on, the core rolls back to the "
            "earlier release. Any other exception is treated the same, as "
            "`TypeName: message`.",
        ),
        Method(
            "rollback",
            "async rollback(request: DeployRequest) -> DeployOutcome",
            True,
            "Returns the target to `request.release`: an operator's rollback task, or "
            '`purpose="auto-rollback"` after a failed deploy. A failure fails the task; '
            "during an auto-rollback it is stored as `rollback_error` beside the deploy's "
            "error.",
        ),
        Method(
            "describe_changes",
            "async describe_changes(current_workdir: Path | None, target_workdir: Path) "
            "-> Sequence[str]",
            False,
            "Before `validate`, when the target differs from the live release: compares the "
            "extracted live release (`None` on a first deploy) with the target. Each line "
            "(at most 50) goes to the timeline, the task result and the notification; "
            "`wrktalk-agent release diff` prints them. A failure or a hang is a `skipped` "
            "note, never a failed task.",
        ),
        Method(
            "validate",
            "async validate(request: DeployRequest) -> Sequence[str]",
            False,
            "Before maintenance goes on. Warnings land in the timeline. `ValidationError` "
            "(its `output` kept in the result) or any other failure refuses the release: "
            "the task fails with nothing changed and no rollback.",
        ),
        Method(
            "prepare",
            "async prepare(request: DeployRequest) -> None",
            False,
            "After `validate`, still before maintenance: stages what does not touch what "
            "is live (images, the release directory). A failure fails the task before "
            "maintenance, with no rollback.",
        ),
        Method(
            "live_release",
            "async live_release() -> LiveState",
            False,
            "After an agent died mid-task, to record the truth: `deployed` at the target "
            "completes the task, another known version becomes current, `absent` clears "
            "the current flag. Without it, or on a failure or an answer that is not a "
            "`LiveState`, the state is `unknown`: the task fails as abandoned and the "
            "flags stay.",
        ),
    ),
)

MAINTENANCE_HANDLER = Contract(
    kind="maintenance handler",
    hook="wrktalk_register_maintenance_handlers",
    methods=(
        _CHECK,
        Method(
            "enable",
            "async enable(reason: str) -> None",
            True,
            "Before the deployer runs (idempotent). A failure fails the task before the "
            "deployer runs; the core still calls `disable`.",
        ),
        Method(
            "disable",
            "async disable() -> None",
            True,
            "After every task, also after failures, and at startup when the database says "
            "maintenance was left on (idempotent). A failure is a failed `maintenance-off` "
            "step and is logged; the task's outcome stands.",
        ),
        Method(
            "status",
            "async status() -> bool",
            True,
            "Reads the real state from the target, not a remembered one: at startup, to "
            "warn about maintenance nobody recorded (a failure is logged and read as off), "
            "and for `wrktalk-agent maintenance` (a failure is the command's error).",
        ),
    ),
)

NOTIFIER = Contract(
    kind="notifier",
    hook="wrktalk_register_notifiers",
    methods=(
        _CHECK,
        Method(
            "notify",
            "async notify(event: NotificationEvent) -> Deliveries",
            True,
            "Called from the outbox when the class has no `deliver`: the notification is "
            "one unit. What it returns is final (`ok=False` is recorded, not retried); an "
            "exception is retried with backoff until `NOTIFY_GIVE_UP_AFTER`; a call cut "
            "off by `NOTIFY_TIMEOUT` or a dead agent is repeated once. Never fails a task.",
        ),
        Method(
            "deliver",
            "async deliver(event: NotificationEvent, attempt: DeliveryAttempt) -> Deliveries",
            False,
            "Called instead of `notify` when defined: per recipient. `temporary` is "
            "retried for that recipient only until the deadline, `permanent` recorded, "
            "`unknown` repeated once; an exception keeps what was reported and retries "
            "the rest. Never fails a task.",
        ),
    ),
)

CONTRACTS: dict[Kind, Contract] = {c.kind: c for c in (DEPLOYER, MAINTENANCE_HANDLER, NOTIFIER)}


def contract_for(kind: Kind) -> Contract:
    return CONTRACTS[kind]
