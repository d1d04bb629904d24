"""wrktalk-agent: the on-premises deployment agent of WrkTalk."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: importlib.metadata costs ~40 ms, which `wrktalk-agent --help` need not pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("wrktalk-agent")
        except PackageNotFoundError:  # running from a source tree without installation
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
