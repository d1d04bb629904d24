"""The whole plugin API of wrktalk-agent.

A plugin is a module registered under the entry-point group ``wrktalk_agent``; it
implements one or more of the hooks below with ``@hookimpl``. Hooks are synchronous and
only *register* backend classes; the backends' methods are ``async`` and are awaited by
the agent (the pattern of ``llm``'s ``register_models``).

A backend class has:

* ``name`` (class attribute): the unique name operators select it by, e.g. ``"helm"``;
* ``settings_model`` (class attribute, optional): a ``pydantic_settings.BaseSettings``
  subclass with its own ``env_prefix`` (``WRKTALK_AGENT_<NAME>_``), instantiated and
  validated at startup, only when the backend is selected;
* ``__init__(self, settings, context)``: ``settings`` is that model's instance (``None``
  without a model), ``context`` a :class:`wrktalk_agent.interfaces.PluginContext`;
* the async methods of its protocol in :mod:`wrktalk_agent.interfaces`, required and
  optional, declared once per kind in :mod:`wrktalk_agent.contract` (signatures and what
  the core does with each result or failure; docs/plugins.md shows the same tables).

Inheriting from ``BaseDeployer``, ``BaseMaintenanceHandler`` or ``BaseNotifier``
(:mod:`wrktalk_agent.interfaces`) is optional: they store ``settings`` and ``context`` and
give a ``check()`` that reports nothing. Each plugin is validated on its own when loaded
(hook names and arguments, backend names, methods, settings prefix); a broken one is listed
as such by ``wrktalk-agent plugins`` and is an error only when one of its backends is
selected. The exceptions a plugin raises or meets are listed in :mod:`wrktalk_agent.errors`.

The public API is :mod:`wrktalk_agent.hookspecs`, :mod:`~wrktalk_agent.interfaces`,
:mod:`~wrktalk_agent.errors`, :mod:`~wrktalk_agent.process`, :mod:`~wrktalk_agent.log` and
:mod:`~wrktalk_agent.testing`; plugins import nothing else from the core (a test enforces
it for the plugins in this repository). ``docs/plugins.md`` documents every hook declared
here (a test enforces it).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["Register", "hookimpl", "hookspec"]

PROJECT_NAME = "wrktalk_agent"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The callable passed to every ``wrktalk_register_*`` hook: call it once per backend class.
Register = Callable[[type], None]


@hookspec
def wrktalk_register_deployers(register: Register) -> None:
    """Register deployer backends.

    Called once, when the agent (or ``wrktalk-agent plugins``) collects backends.
    ``register`` takes a class implementing :class:`wrktalk_agent.interfaces.Deployer`:
    ``check()``, ``deploy(request)`` and ``rollback(request)``, and optionally
    ``describe_changes(current_workdir, target_workdir)``, ``validate(request)``,
    ``prepare(request)`` and ``live_release()`` (declared, with what the core does with
    each, in :mod:`wrktalk_agent.contract`). The class attribute
    ``chart_types`` lists the ``release_artifact.chart_type`` values it can apply; an empty
    tuple accepts any.
    Selected with ``WRKTALK_AGENT_DEPLOYER``. Return value: ignored.
    """


@hookspec
def wrktalk_register_maintenance_handlers(register: Register) -> None:
    """Register maintenance-mode backends.

    Called once, when backends are collected. ``register`` takes a class implementing
    :class:`wrktalk_agent.interfaces.MaintenanceHandler`: ``check()``, ``enable(reason)``,
    ``disable()`` and ``status()``. ``enable``/``disable`` must be idempotent; the agent
    calls ``disable`` after every deploy, also after failures and at startup when it
    finds maintenance left on. Selected with ``WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER``.
    Return value: ignored.
    """


@hookspec
def wrktalk_register_notifiers(register: Register) -> None:
    """Register notifier backends.

    Called once, when backends are collected. ``register`` takes a class implementing
    :class:`wrktalk_agent.interfaces.Notifier`: ``check()`` and ``notify(event)``, which
    returns one :class:`~wrktalk_agent.interfaces.Delivery` per recipient, and optionally
    ``deliver(event, attempt)``, called instead for per-recipient retries. A notifier never
    fails a task: exceptions are caught and recorded. Selected (several at once) with
    ``WRKTALK_AGENT_NOTIFIERS``. Return value: ignored.
    """
