"""Every exception type a plugin may raise or see, in one place.

Raised by backends (the core turns them into a task's error, shown to operators as is):

* :class:`BackendError`: a backend could not do what was asked (any kind of backend);
* :class:`DeployError`: a deploy or rollback failed (``output``, ``system_changed``);
* :class:`ValidationError`: a deployer's optional ``validate()`` refuses the release.

Raised by the core about a plugin (``wrktalk-agent`` prints them as one line each and
exits 2); plugin tests meet them through :mod:`wrktalk_agent.testing`:

* :class:`PluginError`: a plugin could not be loaded, validated, selected or started;
* :class:`SettingsError`: a backend's settings failed validation (``lines``: one
  readable line per problem, naming the environment variable).

The first three are defined in :mod:`wrktalk_agent.interfaces` and re-exported here.
"""

from __future__ import annotations

from wrktalk_agent.interfaces import BackendError, DeployError, ValidationError

__all__ = ["BackendError", "DeployError", "PluginError", "SettingsError", "ValidationError"]


class PluginError(Exception):
    """A plugin could not be loaded, validated, selected or started; the message names
    the plugin, the problem and the fix."""


class SettingsError(PluginError):
    """A backend's settings failed validation; ``lines`` holds one readable line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
