"""What a helm release changes: two sets of rendered manifests compared.

Only kinds, names and container images are named — never data, env or values, since
rendered manifests hold the release's secrets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Key = tuple[str, str, str]  # kind, namespace, name


def parse_manifests(text: str) -> dict[Key, dict[str, Any]]:
    """The resources of ``helm template`` output, by kind, namespace and name."""
    import yaml  # on first use: loading the plugin does not need it

    found: dict[Key, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(text or ""):
        if not isinstance(doc, dict) or "kind" not in doc:
            continue
        meta = doc.get("metadata") or {}
        key = (str(doc["kind"]), str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        found[key] = doc
    return found


def _label(key: Key) -> str:
    kind, namespace, name = key
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def _images(doc: dict[str, Any]) -> dict[str, str]:
    """container name -> image, wherever a pod template or pod spec carries them."""
    images: dict[str, str] = {}

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                for container in node.get(key) or ():
                    if isinstance(container, dict):
                        yield container
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for container in walk(doc.get("spec")):
        if "image" in container:
            images[str(container.get("name") or "?")] = str(container["image"])
    return images


def summarize_manifests(old_text: str | None, new_text: str) -> list[str]:
    """One line per resource added, removed or changed, and per image changed."""
    old = parse_manifests(old_text or "")
    new = parse_manifests(new_text)
    lines = [f"added {_label(k)}" for k in sorted(new.keys() - old.keys())]
    lines += [f"removed {_label(k)}" for k in sorted(old.keys() - new.keys())]
    for key in sorted(old.keys() & new.keys()):
        if old[key] == new[key]:
            continue
        lines.append(f"changed {_label(key)}")
        before, after = _images(old[key]), _images(new[key])
        for container in sorted(before.keys() | after.keys()):
            if before.get(container) != after.get(container):
                lines.append(
                    f"image of {_label(key)} container {container}: "
                    f"{before.get(container, 'none')} -> {after.get(container, 'none')}"
                )
    return lines
