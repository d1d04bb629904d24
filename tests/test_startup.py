"""The command line holds the cyclic collector back while it loads, and a command that has
loaded what it runs puts it back (wrktalk_agent.startup). Each case runs in a process of
its own: the collector's settings are process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_loading_holds_the_collector_back_and_loaded_puts_it_back() -> None:
    out = _run(
        """
        import gc
        from wrktalk_agent import startup
        before = gc.get_threshold()
        startup.loading()
        startup.loading()  # twice: still one set of defaults to go back to
        during = gc.get_threshold()
        startup.loaded()
        print(before == gc.get_threshold(), during[0] == startup.LOADING_THRESHOLD,
              during[1:] == before[1:], gc.get_freeze_count() > 0)
        startup.loaded()  # again: nothing more
        print(before == gc.get_threshold())
        """
    )
    assert out.split() == ["True"] * 5


def test_loaded_without_loading_changes_nothing() -> None:
    # a library user (tests, a plugin's script) never called loading(): no freeze
    out = _run(
        """
        import gc
        from wrktalk_agent import startup
        before = gc.get_threshold()
        startup.loaded()
        print(before == gc.get_threshold(), gc.get_freeze_count())
        """
    )
    assert out.split() == ["True", "0"]


def test_a_command_starts_loading_and_the_dashboard_ends_it() -> None:
    out = _run(
        """
        import gc, os
        os.environ["WRKTALK_AGENT_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
        from click.testing import CliRunner
        from wrktalk_agent import startup
        from wrktalk_agent.cli import main
        default = gc.get_threshold()
        CliRunner().invoke(main, ["tui", "--help"], catch_exceptions=False)
        print(gc.get_threshold()[0] == startup.LOADING_THRESHOLD)
        from wrktalk_agent.cli import load_settings
        from wrktalk_agent.tui import create_app
        create_app(load_settings())
        print(gc.get_threshold() == default, gc.get_freeze_count() > 0)
        """
    )
    assert out.split() == ["True", "True", "True"]
