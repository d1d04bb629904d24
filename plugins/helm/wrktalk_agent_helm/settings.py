"""Settings of the helm deployer (``WRKTALK_AGENT_HELM_*``), validated at agent startup."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "CONNECTION_FLAGS",
    "MANAGED_FLAGS",
    "OUTPUT_FLAGS",
    "REFUSED_FLAGS",
    "HelmSettings",
    "parse_go_duration",
]

# Helm's own rule for release names (chartutil.ValidateReleaseName): a lowercase DNS-1123
# subdomain of at most 53 characters, so that generated resource names still fit in 63.
_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RELEASE_NAME_MAX = 53
# A namespace is a DNS-1123 label.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAMESPACE_MAX = 63

# Go's time.ParseDuration syntax (what `helm --timeout` accepts), without a sign: a sign
# makes no sense for a timeout and "-5m" would even read like a flag.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: flags the deployer sets itself; overriding them through extra_args would break the
#: rollback bookkeeping (--description), the hard timeout (--timeout) or the target. Each
#: maps to what an operator uses instead, named in the refusal.
MANAGED_FLAGS: dict[str, str] = {
    "--install": "the agent always runs `helm upgrade --install`",
    "-i": "the agent always runs `helm upgrade --install`",
    "--namespace": "set WRKTALK_AGENT_KUBE_NAMESPACE instead",
    "-n": "set WRKTALK_AGENT_KUBE_NAMESPACE instead",
    "--create-namespace": "set WRKTALK_AGENT_HELM_CREATE_NAMESPACE instead",
    "--wait": "set WRKTALK_AGENT_HELM_WAIT_STRATEGY instead (the agent always waits)",
    "--timeout": "set WRKTALK_AGENT_HELM_TIMEOUT instead",
    "--history-max": "set WRKTALK_AGENT_HELM_HISTORY_MAX instead",
    "--atomic": "the agent always passes it (--rollback-on-failure on Helm 4)",
    "--rollback-on-failure": "the agent always passes it (--atomic on Helm 3)",
    "--description": "the agent sets it: rollbacks find a release's revision by it",
    "--kube-context": "set WRKTALK_AGENT_HELM_KUBE_CONTEXT instead",
    "--kubeconfig": "set WRKTALK_AGENT_HELM_KUBECONFIG instead",
    "--reset-values": "the agent always passes it: a release runs on its own values_data",
    "--reuse-values": "a release runs on its own values_data (the agent passes --reset-values)",
    "--reset-then-reuse-values": "a release runs on its own values_data (the agent passes "
    "--reset-values)",
    "--dry-run": "validation runs the server-side dry run itself",
}
_WHOLE_RELEASE = (
    "it makes helm print the whole release, values and manifests included, into the task's "
    "output; nothing replaces it: the task result records the revision and Helm version, "
    "and `helm history` shows the rest"
)
#: flags that make `helm upgrade` print the release's values and rendered manifest
#: (Secrets included, base64-encoded, which output masking cannot recognise) into the
#: output the agent streams into the task's timeline and keeps in its result
OUTPUT_FLAGS: dict[str, str] = {
    "--debug": "it makes helm print the release's values and rendered manifests (Secrets "
    "included) into the task's output; for the agent's own detail set "
    "WRKTALK_AGENT_LOG_LEVEL=debug",
    "--output": _WHOLE_RELEASE,
    "-o": _WHOLE_RELEASE,
}
_KUBECONFIG_FIELD = (
    "it would reach only `helm upgrade`, not the history, rollback and uninstall calls; "
    "set {field} in the kubeconfig file named by WRKTALK_AGENT_HELM_KUBECONFIG (with "
    "WRKTALK_AGENT_HELM_KUBE_CONTEXT for its context), which every helm call uses"
)
#: Helm's global connection flags: a kubeconfig holds every one of them, and the agent
#: passes the kubeconfig and its context to every helm call it makes
CONNECTION_FLAGS: dict[str, str] = {
    flag: _KUBECONFIG_FIELD.format(field=field)
    for flag, field in {
        "--kube-apiserver": "the cluster's `server:`",
        "--kube-token": "the user's `token:` or `tokenFile:`",
        "--kube-as-user": "the user's `as:`",
        "--kube-as-group": "the user's `as-groups:`",
        "--kube-ca-file": "the cluster's `certificate-authority:`",
        "--kube-tls-server-name": "the cluster's `tls-server-name:`",
        "--kube-insecure-skip-tls-verify": "the cluster's `insecure-skip-tls-verify:`",
    }.items()
}
#: every flag extra_args may not hold, with what replaces it
REFUSED_FLAGS: dict[str, str] = {**MANAGED_FLAGS, **OUTPUT_FLAGS, **CONNECTION_FLAGS}
#: one-letter flags of `helm upgrade` that take a value: in a group such as ``-fFILE`` the
#: rest of the item is that value, not more flags
_SHORTHAND_WITH_VALUE = frozenset("flno")
_EXTRA_ARGS = "WRKTALK_AGENT_HELM_EXTRA_ARGS"
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``90s``, ``10m`` or ``1h30m``; ``ValueError`` if invalid."""
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"invalid duration {text!r}: use a Go duration such as 90s, 10m or 1h30m")
    return total


class HelmSettings(BaseSettings):
    """How the agent drives ``helm`` for a Kubernetes installation."""

    model_config = SettingsConfigDict(
        env_prefix="WRKTALK_AGENT_HELM_", extra="ignore", populate_by_name=True
    )

    release_name: str = Field(
        "wrktalk",
        description="Helm release name of the WrkTalk installation (lowercase DNS-1123, "
        "at most 53 characters).",
    )
    namespace: str = Field(
        "wrktalk",
        # The Kubernetes namespace is shared knowledge of the whole agent (its k8s
        # manifests set WRKTALK_AGENT_KUBE_NAMESPACE); the helm-prefixed name also works.
        validation_alias=AliasChoices(
            "WRKTALK_AGENT_KUBE_NAMESPACE", "WRKTALK_AGENT_HELM_NAMESPACE"
        ),
        description="Kubernetes namespace of the release, from WRKTALK_AGENT_KUBE_NAMESPACE "
        "(or WRKTALK_AGENT_HELM_NAMESPACE); created on first install.",
    )
    create_namespace: bool = Field(
        True,
        description="Pass --create-namespace on a first install. Turn it off when the agent "
        "may not create namespaces (a namespaced Role, as in deploy/k8s) and create the "
        "namespace beforehand: Helm asks to create it even when it exists, and is refused.",
    )
    timeout: str = Field(
        "10m",
        description="helm --timeout: how long Helm waits for resources to become ready "
        "(Go duration: 90s, 10m, 1h30m).",
    )
    kube_context: str | None = Field(
        None, description="kubeconfig context to use (helm --kube-context); default: current."
    )
    kubeconfig: Path | None = Field(
        None,
        description="Path of the kubeconfig file (helm --kubeconfig); default: in-cluster "
        "service account or $KUBECONFIG.",
    )
    extra_args: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra arguments appended to `helm upgrade --install`, as a JSON list, "
        'e.g. ["--set-string", "image.registry=registry.local"]. Items may not contain '
        "newlines or NUL, repeat a flag the agent sets (--namespace, --timeout, ...), make "
        "helm print values or manifests (--debug, -o/--output) or choose the cluster or "
        "identity (--kube-apiserver, --kube-token, --kube-as-user, ...: put those in the "
        "kubeconfig, which every helm call uses). They show up in process listings: keep "
        "secrets in values_data instead.",
    )
    binary: str = Field("helm", description="helm executable: a name looked up on PATH, or a path.")
    wait_strategy: Literal["watcher", "legacy"] = Field(
        "watcher",
        description="Helm 4 only: how --wait decides that resources are ready, passed as "
        "--wait=STRATEGY (watcher: kstatus, also custom resources; legacy: Helm 3's checks). "
        "Helm 3 always gets a plain --wait.",
    )
    on_validation_unavailable: Literal["fail", "warn"] = Field(
        "fail",
        description="When a release's validation cannot run (helm missing, the cluster "
        "unreachable for the server-side dry run): fail the task before maintenance, or "
        "deploy anyway with a warning in the task's timeline.",
    )
    history_max: int = Field(
        10, ge=0, description="helm --history-max: revisions Helm keeps per release (0: no limit)."
    )

    @field_validator("release_name")
    @classmethod
    def _release_name(cls, value: str) -> str:
        if len(value) > _RELEASE_NAME_MAX or not _RELEASE_NAME.fullmatch(value):
            raise ValueError(
                "a Helm release name must be lowercase letters, digits, '-' and '.', start "
                f"and end with a letter or digit, and be at most {_RELEASE_NAME_MAX} characters"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if len(value) > _NAMESPACE_MAX or not _NAMESPACE.fullmatch(value):
            raise ValueError(
                "a Kubernetes namespace must be lowercase letters, digits and '-', start and "
                f"end with a letter or digit, and be at most {_NAMESPACE_MAX} characters"
            )
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if parse_go_duration(value) <= 0:
            raise ValueError("the timeout must be longer than zero")
        return value

    @field_validator("kube_context", "binary")
    @classmethod
    def _plain_argument(cls, value: str | None) -> str | None:
        # These become separate argv items; a leading dash would be read as another flag.
        if value is not None and (not value or value.startswith("-") or _has_control(value)):
            raise ValueError(
                "must be non-empty, not start with '-', and hold no control characters"
            )
        return value

    @field_validator("extra_args", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # Decoded here rather than by pydantic-settings so that a malformed value becomes a
        # readable validation error naming the variable instead of a parser traceback.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'must be a JSON list of strings, e.g. ["--set-string", "a=b"] ({exc.msg})'
                ) from None
        return value

    @model_validator(mode="after")
    def _safe_extra_args(self) -> HelmSettings:
        # Checked on the whole model so that the refusal names the variable without
        # echoing the items: the flag refused may well carry a token.
        for position, item in enumerate(self.extra_args, start=1):
            if any(ch in item for ch in "\n\r\x00"):
                raise ValueError(
                    f"{_EXTRA_ARGS}: item {position} contains a newline or NUL character"
                )
            flag = refused_flag(item)
            if flag is not None:
                shown = flag if item.startswith("--") else item  # -nNS, -ojson: no secret
                raise ValueError(f"{_EXTRA_ARGS}: {shown!r} is not allowed: {REFUSED_FLAGS[flag]}")
        return self

    @property
    def timeout_seconds(self) -> float:
        return parse_go_duration(self.timeout)


def refused_flag(item: str) -> str | None:
    """The refused flag one extra argument sets, as pflag would read it (``--flag``,
    ``--flag=value``, ``-n``, ``-nNS``, ``-n=NS`` or a group such as ``-in``), or ``None``."""
    if item.startswith("--"):
        name = item.split("=", 1)[0]
        return name if name in REFUSED_FLAGS else None
    if not item.startswith("-") or item == "-":
        return None
    for letter in item[1:]:
        if f"-{letter}" in REFUSED_FLAGS:
            return f"-{letter}"
        if letter in _SHORTHAND_WITH_VALUE or letter == "=":
            return None
    return None


def _has_control(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
