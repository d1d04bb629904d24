"""A command's start-up: the cyclic garbage collector held back while modules load.

Loading the agent, pydantic, Textual and their models creates a few hundred thousand
long-lived objects and next to no garbage. With Python's default thresholds the collector
walks that growing heap again and again while it is built (about 90 ms of the dashboard's
first paint on a 2-core machine). The command line's group calls :func:`loading` before a
command imports anything heavy; a command calls :func:`loaded` once it has loaded what it
runs (``run`` once its agent is built, ``tui`` once its app is), which moves
everything loaded so far out of the collector's sight (``gc.freeze``: module objects are
never garbage) and puts the default thresholds back, so a long-running agent collects as
usual. A command that never calls :func:`loaded` only collects its youngest objects less
often until it exits.
"""

from __future__ import annotations

import gc

#: objects allocated (net) between collections of the youngest generation while loading
#: (the default is 700)
LOADING_THRESHOLD = 100_000

_defaults: tuple[int, int, int] | None = None


def loading() -> None:
    """Collect the youngest generation rarely until :func:`loaded`."""
    global _defaults
    if _defaults is None:
        _defaults = gc.get_threshold()
        gc.set_threshold(LOADING_THRESHOLD, *_defaults[1:])


def loaded() -> None:
    """Start-up is over: freeze what was loaded and collect with the usual thresholds."""
    global _defaults
    if _defaults is not None:
        gc.freeze()
        gc.set_threshold(*_defaults)
        _defaults = None
