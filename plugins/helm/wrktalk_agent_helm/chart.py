"""The chart of an extracted release, and how its values reach Helm."""

from __future__ import annotations

from pathlib import Path

from wrktalk_agent.interfaces import DeployError


def find_chart(workdir: Path) -> Path:
    """The chart of an extracted release: ``Chart.yaml`` at the top, or exactly one chart
    directory, or exactly one packaged chart (``*.tgz``)."""
    if (workdir / "Chart.yaml").is_file():
        return workdir
    directories = sorted(p for p in workdir.iterdir() if (p / "Chart.yaml").is_file())
    packages = sorted(p for p in workdir.glob("*.tgz") if p.is_file())
    found = directories + packages
    if len(found) == 1:
        return found[0]
    if found:
        listing = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        detail = f"more than one candidate ({listing}); ship exactly one chart"
    else:
        detail = "expected Chart.yaml at the top, one chart directory or one packaged chart (*.tgz)"
    raise DeployError(f"no Helm chart found in the release: {detail}", system_changed=False)


def values_arg(path: Path) -> str:
    """A path as one item of Helm's ``-f`` string slice, which pflag reads as a CSV record:
    quoted when it holds a comma or a quote, so Helm does not split it."""
    text = str(path)
    if any(ch in text for ch in ',"') or text.startswith(" "):
        return '"' + text.replace('"', '""') + '"'
    return text


def values_flags(values_file: Path | None) -> list[str]:
    """The release's values, and nothing else: ``--reset-values`` keeps Helm from
    reusing the previous release's values when this release ships none."""
    values = ["-f", values_arg(values_file)] if values_file else []
    return [*values, "--reset-values"]
