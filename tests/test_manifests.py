"""deploy/k8s and deploy/compose: they parse, use only settings that exist with values
that validate, and keep the invariants the comments in them promise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.settings_doc import all_env_names, installed_models

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose"
ENV_NAME = re.compile(r"\bWRKTALK_AGENT_[A-Z0-9_]+\b")
IMAGE_UID = 10001  # the USER of the Dockerfile


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object by ``Kind/name``."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.fixture(scope="module")
def pod(objects) -> dict[str, Any]:
    return objects["Deployment/wrktalk-agent"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict[str, Any]:
    (agent,) = pod["containers"]
    return agent


@pytest.fixture(scope="module")
def k8s_env(objects, container) -> dict[str, str]:
    """The agent's environment as the pod would see it (ConfigMap, Secret, env)."""
    env = dict(objects["ConfigMap/wrktalk-agent"]["data"])
    env.update(objects["Secret/wrktalk-agent"]["stringData"])
    env.update({e["name"]: e.get("value", "from-field") for e in container.get("env", [])})
    return env


def with_defaults(text: str) -> str:
    """The compose file as `docker compose` reads it with none of its variables set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(with_defaults((COMPOSE / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def compose_env(compose) -> dict[str, str]:
    env = {}
    for line in (COMPOSE / "agent.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    env.update(compose["services"]["agent"]["environment"])
    return env


def known_settings() -> set[str]:
    return set().union(*(all_env_names(m) for m in installed_models().values()))


def validated(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[AgentSettings, dict[str, BaseSettings]]:
    """The agent's settings and the settings of every selected backend, from ``env``."""
    import os

    for key in [k for k in os.environ if k.startswith("WRKTALK_AGENT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = AgentSettings()
    models = installed_models()
    selected = [settings.deployer_name, settings.maintenance_name, *settings.notifiers]
    plugins = {name: models[name]() for name in selected if name and name in models}
    return settings, plugins


# -- every file --------------------------------------------------------------------------
def test_every_yaml_file_parses() -> None:
    files = [*K8S.glob("*.yaml"), *COMPOSE.glob("*.yml")]
    assert len(files) >= 7
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = sorted(
        p.name
        for p in K8S.glob("*.yaml")
        if p.name not in ("kustomization.yaml", "app-namespace.yaml")  # applied by hand, once
    )
    assert sorted(listed) == present


@pytest.mark.parametrize(
    "path",
    [*sorted(K8S.glob("*.yaml")), COMPOSE / "docker-compose.yml", COMPOSE / "agent.env.example"],
    ids=lambda p: p.name,
)
def test_only_existing_settings_are_referenced(path: Path) -> None:
    unknown = set(ENV_NAME.findall(path.read_text())) - known_settings()
    assert not unknown, f"{path.name}: not a setting of the agent or an installed plugin: {unknown}"


# -- Kubernetes --------------------------------------------------------------------------
def test_k8s_settings_validate(k8s_env, monkeypatch) -> None:
    settings, plugins = validated(k8s_env, monkeypatch)
    assert settings.deployment_type == "kubernetes" and settings.deployer_name == "helm"
    assert settings.http_port == 8080
    if "helm" in plugins:  # the namespace reaches the helm deployer, not just the Role
        helm: Any = plugins["helm"]
        assert helm.namespace == k8s_env["WRKTALK_AGENT_KUBE_NAMESPACE"]
        # a namespaced Role cannot allow --create-namespace (see rbac.yaml)
        assert helm.create_namespace is False


def test_one_replica_by_default(objects) -> None:
    assert objects["Deployment/wrktalk-agent"]["spec"]["replicas"] == 1


def test_probes_hit_the_agent_endpoint(container, k8s_env) -> None:
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert str(port) == k8s_env["WRKTALK_AGENT_HTTP_PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_grace_periods_cover_a_whole_helm_run(pod, k8s_env, monkeypatch) -> None:
    settings, plugins = validated(k8s_env, monkeypatch)
    if "helm" not in plugins:
        pytest.skip("the helm plugin is not installed")
    helm_seconds = plugins["helm"].timeout_seconds  # type: ignore[attr-defined]
    health_check_worst = settings.healthcheck_retries * (
        settings.healthcheck_timeout + settings.healthcheck_interval
    )
    # the helm deployer stops helm itself a minute after helm's own --timeout
    assert settings.shutdown_grace >= helm_seconds + 60 + health_check_worst
    # and the kubelet must not SIGKILL before the agent has cleaned up after the grace
    assert pod["terminationGracePeriodSeconds"] >= settings.shutdown_grace + 30


def test_the_pod_runs_locked_down(pod, container) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == IMAGE_UID
    container_security = container["securityContext"]
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]


def test_the_work_dir_is_a_writable_volume(pod, container, k8s_env) -> None:
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    work_dir = Path(k8s_env["WRKTALK_AGENT_WORK_DIR"])
    assert any(
        work_dir.is_relative_to(path) and name in empty_dirs for path, name in mounts.items()
    ), f"{work_dir} is not on an emptyDir: the root file system is read-only"
    assert mounts.get("/tmp") in empty_dirs  # helm's cache and config


def test_rbac_is_scoped_to_the_helm_namespace(objects, pod, k8s_env) -> None:
    namespace = k8s_env["WRKTALK_AGENT_KUBE_NAMESPACE"]
    role = objects["Role/wrktalk-agent-helm"]
    binding = objects["RoleBinding/wrktalk-agent-helm"]
    assert role["metadata"]["namespace"] == namespace
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wrktalk-agent-helm",
    }  # fmt: skip
    account = objects[f"ServiceAccount/{pod['serviceAccountName']}"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert not [k for k in objects if k.startswith(("ClusterRole", "ClusterRoleBinding"))]
    # without the right to create namespaces, the manifests must create it
    assert f"Namespace/{namespace}" in objects
    # Helm keeps its release history in Secrets of the release's namespace
    secrets_rule = next(r for r in role["rules"] if "secrets" in r["resources"])
    assert {"get", "list", "create", "update", "delete"} <= set(secrets_rule["verbs"])


def test_the_kustomization_does_not_own_the_application_namespace(k8s_env) -> None:
    """`kubectl delete -k deploy/k8s` deletes what the kustomization lists: never
    WrkTalk's own namespace (and everything in it)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    namespace = k8s_env["WRKTALK_AGENT_KUBE_NAMESPACE"]
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc and doc["kind"] == "Namespace":
                assert doc["metadata"]["name"] != namespace, f"{resource} owns {namespace}"


def test_the_secret_holds_placeholders_only(objects) -> None:
    secret = objects["Secret/wrktalk-agent"]
    assert set(secret["stringData"].values()) == {"CHANGE-ME"}
    assert "WRKTALK_AGENT_DB_PASSWORD" in secret["stringData"]
    config = objects["ConfigMap/wrktalk-agent"]["data"]
    assert not [k for k in config if "PASSWORD" in k], "passwords belong in the Secret"


# -- Docker Compose ----------------------------------------------------------------------
def test_compose_settings_validate(compose_env, monkeypatch) -> None:
    settings, plugins = validated(compose_env, monkeypatch)
    assert settings.deployment_type == "docker" and settings.deployer_name == "compose"
    assert settings.maintenance_name == "nginx"
    if "nginx" in plugins:  # the flag nginx tests is the one the handler writes
        flag_file = plugins["nginx"].flag_file  # type: ignore[attr-defined]
        assert str(flag_file) == compose_env["WRKTALK_AGENT_NGINX_FLAG_FILE"]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unparsed duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_compose_agent_talks_to_the_host_daemon(compose, compose_env) -> None:
    agent = compose["services"]["agent"]
    assert "agent.env" in str(agent["env_file"])
    assert "/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"]
    assert agent["group_add"], "uid 10001 needs the docker group to use the socket"
    working_dir = compose_env["WRKTALK_AGENT_COMPOSE_WORKING_DIR"]
    assert f"{working_dir}:{working_dir}" in agent["volumes"], "host and container paths differ"
    assert _seconds(agent["stop_grace_period"]) > float(compose_env["WRKTALK_AGENT_SHUTDOWN_GRACE"])


def test_compose_shares_the_maintenance_flag_with_nginx(compose, compose_env) -> None:
    flag_dir = str(Path(compose_env["WRKTALK_AGENT_NGINX_FLAG_FILE"]).parent)
    mounts = {
        service: {v.split(":")[0]: v.split(":")[1] for v in spec.get("volumes", [])}
        for service, spec in compose["services"].items()
    }
    shared = [name for name, target in mounts["agent"].items() if target == flag_dir]
    assert shared and shared[0] in compose["volumes"], "the flag dir is not a named volume"
    assert mounts["nginx"].get(shared[0]) == flag_dir
    # nginx.conf includes the plugin's server snippet, which the nginx image carries
    # rendered with its defaults: those must test the flag file the agent writes
    nginx_conf = (COMPOSE / "nginx.conf").read_text()
    assert "include /etc/nginx/snippets/wrktalk-maintenance.conf;" in nginx_conf
    nginx_dockerfile = (COMPOSE / "nginx" / "Dockerfile").read_text()
    assert "/etc/nginx/snippets/wrktalk-maintenance.conf" in nginx_dockerfile
    snippet = pytest.importorskip("wrktalk_agent_nginx").render_snippets().server
    assert f"if (-f {compose_env['WRKTALK_AGENT_NGINX_FLAG_FILE']})" in snippet


def test_compose_agent_runs_locked_down(compose, compose_env) -> None:
    agent = compose["services"]["agent"]
    assert agent["read_only"] is True
    tmpfs = [t.split(":")[0] for t in agent["tmpfs"]]
    # the Dockerfile's work dir and /tmp (docker's and helm's config and caches)
    assert sorted(tmpfs) == ["/tmp", "/var/lib/wrktalk-agent/work"]
    assert compose["name"]  # Compose v2 only: v1 rejects a top-level name
