"""wrktalk-agent: the on-premises deployment agent of WrkTalk."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wrktalk-agent")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
