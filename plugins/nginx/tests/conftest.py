"""Fixtures for the nginx plugin's tests; they live in :mod:`wrktalk_agent_nginx.testing`
so that other test suites (the core's pipeline tests) can import them the same way."""

from wrktalk_agent_nginx.testing import nginx_proxy

__all__ = ["nginx_proxy"]
