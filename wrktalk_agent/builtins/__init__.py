"""Backends shipped with the core, registered through the same entry points as plugins."""
