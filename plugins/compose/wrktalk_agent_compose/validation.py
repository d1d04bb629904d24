"""Checks of a release before maintenance goes on: what `compose config` resolves, the
images it needs and the host ports it publishes.

The resolved model comes from compose itself (with the release's ``.env``), so it holds
interpolated values: it is parsed here and never logged or reported.
"""

from __future__ import annotations

import errno
import json
import socket
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: how many ports of a published range are checked one by one
MAX_RANGE = 256


@dataclass(frozen=True, order=True)
class PublishedPort:
    host_ip: str  # "" for every address
    port: int
    protocol: str  # tcp, udp

    def __str__(self) -> str:
        where = f"{self.host_ip}:" if self.host_ip else ""
        return f"{where}{self.port}/{self.protocol}"


def resolved_services(config_output: str) -> dict[str, dict[str, Any]]:
    """The ``services`` mapping of `compose config`'s output ({} when it has none)."""
    import yaml  # on first use: loading the plugin does not need it

    document = yaml.safe_load(config_output) or {}
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        return {}
    return {str(k): v if isinstance(v, dict) else {} for k, v in services.items()}


def normalize_image(reference: str) -> str:
    """``busybox`` → ``busybox:latest``; ``docker.io/library/x:1`` → ``x:1``: the form
    in which ``docker save`` records tags, so that names compare."""
    name = reference.strip()
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if "@" in name:
        return name
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def bundled_images(tars: Iterable[Path]) -> set[str]:
    """The tags the bundle's image tars carry (``docker save`` format: manifest.json's
    RepoTags; OCI layout: index.json's image name annotations), normalized."""
    names: set[str] = set()
    for path in tars:
        try:
            with tarfile.open(path) as tar:
                names.update(_tags_in(tar))
        except (OSError, tarfile.TarError):
            continue  # docker load reports a broken tar with its own message
    return {normalize_image(n) for n in names}


def _tags_in(tar: tarfile.TarFile) -> list[str]:
    tags: list[str] = []
    for member_name, read in (("manifest.json", _repo_tags), ("index.json", _oci_names)):
        try:
            member = tar.extractfile(member_name)
        except KeyError:
            continue
        if member is None:
            continue
        try:
            tags += read(json.loads(member.read()))
        except ValueError:
            continue
    return tags


def _repo_tags(manifest: Any) -> list[str]:
    if not isinstance(manifest, list):
        return []
    return [
        str(t) for entry in manifest if isinstance(entry, dict) for t in entry.get("RepoTags") or []
    ]


def _oci_names(index: Any) -> list[str]:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    names = []
    for entry in manifests or []:
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        name = (annotations or {}).get("io.containerd.image.name")
        if name:
            names.append(str(name))
    return names


def published_ports(service: Mapping[str, Any]) -> list[PublishedPort]:
    """Host ports a service publishes, from `config` output (long syntax from v2, short
    strings from v1) or a compose file as written."""
    found: list[PublishedPort] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            if published in (None, ""):
                continue
            host_ip = str(entry.get("host_ip") or "")
            protocol = str(entry.get("protocol") or "tcp")
            found += _expand(host_ip, str(published), protocol)
        elif isinstance(entry, (str, int)):
            found += _parse_short(str(entry))
    return found


def _parse_short(spec: str) -> list[PublishedPort]:
    spec, _, protocol = spec.partition("/")
    # host_ip may be IPv6 in brackets; container port is always the last part
    if spec.startswith("["):
        closing = spec.index("]")
        host_ip, rest = spec[1:closing], spec[closing + 2 :]
        parts = rest.split(":")
    else:
        parts = spec.split(":")
        host_ip = parts.pop(0) if len(parts) == 3 else ""
    if len(parts) < 2 or not parts[0]:
        return []  # only a container port: Docker picks an ephemeral host port
    return _expand(host_ip, parts[0], protocol or "tcp")


def _expand(host_ip: str, published: str, protocol: str) -> list[PublishedPort]:
    low, _, high = published.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        return []
    last = min(last, first + MAX_RANGE - 1)
    return [PublishedPort(host_ip, port, protocol) for port in range(first, last + 1)]


def port_in_use(port: PublishedPort) -> bool:
    """Whether binding ``port`` fails because something holds it.

    A TCP port is bound the way Docker binds it (SO_REUSEADDR, as every Go listener
    does): connections a stopped stack served moments ago leave TIME-WAIT sockets on the
    port for up to a minute, which Docker ignores, so only a socket bound or listening
    there counts as taken. UDP has no TIME-WAIT; there SO_REUSEADDR would let two
    sockets share the port and hide a real holder, so it is not set."""
    family = socket.AF_INET6 if ":" in port.host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if port.protocol == "udp" else socket.SOCK_STREAM
    address = port.host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0")  # noqa: S104
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port.port))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def ports_from_docker_ps(lines: Iterable[str]) -> set[tuple[int, str]]:
    """(port, protocol) pairs from `docker ps --format {{.Ports}}` lines such as
    ``127.0.0.1:8080->8080/tcp, :::8080->8080/tcp``."""
    held: set[tuple[int, str]] = set()
    for line in lines:
        for mapping in line.split(","):
            host, arrow, container = mapping.strip().partition("->")
            if not arrow:
                continue
            protocol = container.rpartition("/")[2] or "tcp"
            ports = host.rpartition(":")[2]
            low, _, high = ports.partition("-")
            try:
                first, last = int(low), int(high or low)
            except ValueError:
                continue
            held.update((p, protocol) for p in range(first, last + 1))
    return held
