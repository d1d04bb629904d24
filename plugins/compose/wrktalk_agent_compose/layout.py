"""What a compose release artifact contains, checked before anything is touched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrktalk_agent.interfaces import DeployError

#: The names Compose itself looks for, in its order of preference.
COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
IMAGES_DIR = "images"


@dataclass(frozen=True)
class ReleaseLayout:
    """The parts of an extracted release the deployer uses."""

    root: Path
    compose_file: Path
    images: tuple[Path, ...]
    #: services that other services wait for with ``service_completed_successfully``:
    #: they are meant to exit, so exiting with 0 is success for them (as in v2's --wait).
    one_shot_services: frozenset[str] = field(default_factory=frozenset)
    #: the services the compose file defines, in file order
    services: tuple[str, ...] = ()


def read_layout(root: Path) -> ReleaseLayout:
    """Find and validate the compose file and bundled images under ``root``.

    Raises :class:`DeployError` with ``system_changed=False``: nothing is modified yet.
    """
    found = [root / name for name in COMPOSE_FILE_NAMES if (root / name).is_file()]
    if not found:
        raise _bad_artifact(
            "no compose file in the release artifact: expected one of "
            + ", ".join(COMPOSE_FILE_NAMES)
            + " at the top level"
        )
    if len(found) > 1:
        # Compose would silently pick one; an artifact that ships two is a packaging mistake.
        raise _bad_artifact(
            "the release artifact has more than one compose file ("
            + ", ".join(p.name for p in found)
            + "); keep exactly one"
        )
    compose_file = found[0]
    document = load_compose_document(compose_file)
    images_dir = root / IMAGES_DIR
    images = tuple(sorted(images_dir.glob("*.tar"))) if images_dir.is_dir() else ()
    return ReleaseLayout(
        root=root,
        compose_file=compose_file,
        images=images,
        one_shot_services=_one_shot_services(document["services"]),
        services=tuple(str(name) for name in document["services"]),
    )


def load_compose_document(path: Path) -> dict[str, Any]:
    import yaml  # on first use: loading the plugin does not need it

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise _bad_artifact(f"invalid YAML in {path.name}{where}: {exc.problem}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _bad_artifact(f"invalid YAML in {path.name}: {exc}") from exc
    if not isinstance(document, dict):
        raise _bad_artifact(f"{path.name} must be a YAML mapping with a 'services' key")
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        raise _bad_artifact(f"{path.name} has no 'services' mapping")
    return document


def _one_shot_services(services: Mapping[str, Any]) -> frozenset[str]:
    names: set[str] = set()
    for service in services.values():
        depends_on = service.get("depends_on") if isinstance(service, dict) else None
        if not isinstance(depends_on, dict):  # the list form has no conditions
            continue
        for dependency, options in depends_on.items():
            if isinstance(options, dict) and options.get("condition") == (
                "service_completed_successfully"
            ):
                names.add(str(dependency))
    return frozenset(names)


def _bad_artifact(message: str) -> DeployError:
    return DeployError(message, system_changed=False)
