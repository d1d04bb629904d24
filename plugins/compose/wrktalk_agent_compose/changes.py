"""What a compose release changes compared with another: services added and removed,
images and published ports changed. Read from the two compose files as written (no
interpolation: ``.env`` values are secrets and never part of the summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wrktalk_agent.interfaces import DeployError

from .layout import COMPOSE_FILE_NAMES, load_compose_document


def summarize_changes(old_root: Path | None, new_root: Path) -> list[str]:
    """One line per change from the release extracted in ``old_root`` (``None``: nothing
    deployed yet) to the one in ``new_root``, in a stable order. Raises
    :class:`~wrktalk_agent.interfaces.DeployError` when a compose file is unreadable."""
    new = _services(new_root)
    if old_root is None:
        return [f"first release: services {', '.join(sorted(new)) or '-'}"]
    old = _services(old_root)
    lines: list[str] = []
    for name in sorted(new.keys() - old.keys()):
        lines.append(f"service added: {name} ({_image(new[name])})")
    for name in sorted(old.keys() - new.keys()):
        lines.append(f"service removed: {name} ({_image(old[name])})")
    for name in sorted(new.keys() & old.keys()):
        before, after = _image(old[name]), _image(new[name])
        if before != after:
            lines.append(f"image changed: {name} {before} → {after}")
        ports_before, ports_after = _ports(old[name]), _ports(new[name])
        if ports_before != ports_after:
            lines.append(f"published ports changed: {name} {ports_before} → {ports_after}")
    return lines  # none: the agent's timeline says "no change"


def _services(root: Path) -> dict[str, dict[str, Any]]:
    found = [root / n for n in COMPOSE_FILE_NAMES if (root / n).is_file()]
    if not found:
        raise DeployError(f"no compose file in {root}", system_changed=False)
    services = load_compose_document(found[0])["services"]
    return {str(k): v if isinstance(v, dict) else {} for k, v in services.items()}


def _image(service: dict[str, Any]) -> str:
    image = service.get("image")
    if image:
        return str(image)
    return "built from source" if service.get("build") else "no image"


def _ports(service: dict[str, Any]) -> str:
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host = f"{entry['host_ip']}:" if entry.get("host_ip") else ""
            published = entry.get("published", "")
            spec = (
                f"{host}{published}:{entry.get('target', '')}"
                if published
                else str(entry.get("target", ""))
            )
            if entry.get("protocol") not in (None, "tcp"):
                spec += f"/{entry['protocol']}"
            ports.append(spec)
        else:
            ports.append(str(entry))
    return ", ".join(sorted(ports)) or "none"
