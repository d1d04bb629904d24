"""The parts of :mod:`wrktalk_agent.testing`, the public module for tests (the core's and
plugins'): import from there, not from here."""
