"""``python -m wrktalk_agent.cli``: the same as the ``wrktalk-agent`` script."""

from wrktalk_agent.cli import main

main(prog_name="wrktalk-agent")
