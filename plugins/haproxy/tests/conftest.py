"""Fixtures for the haproxy plugin's tests; they live in :mod:`wrktalk_agent_haproxy.testing`
so that other test suites (the core's pipeline tests) can import them the same way."""

from wrktalk_agent_haproxy.testing import haproxy_proxy

__all__ = ["haproxy_proxy"]
