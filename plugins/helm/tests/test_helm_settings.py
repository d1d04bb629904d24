"""HelmSettings: defaults, environment variables, and what an operator gets for bad values."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from wrktalk_agent.interfaces import PluginContext
from wrktalk_agent.testing import PluginRegistry, SettingsError, load_backend_settings
from wrktalk_agent_helm import HelmDeployer, HelmSettings
from wrktalk_agent_helm.settings import CONNECTION_FLAGS, OUTPUT_FLAGS, parse_go_duration


def test_defaults() -> None:
    settings = HelmSettings()
    assert settings.release_name == "wrktalk"
    assert settings.namespace == "wrktalk"
    assert settings.create_namespace is True
    assert settings.timeout == "10m"
    assert settings.timeout_seconds == 600
    assert settings.kube_context is None
    assert settings.kubeconfig is None
    assert settings.extra_args == []
    assert settings.binary == "helm"
    assert settings.history_max == 10


def test_every_field_is_documented() -> None:
    for name, info in HelmSettings.model_fields.items():
        assert info.description, f"HelmSettings.{name} has no description"


def test_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_HELM_RELEASE_NAME", "wrktalk-prod")
    monkeypatch.setenv("WRKTALK_AGENT_HELM_TIMEOUT", "1h30m")
    monkeypatch.setenv("WRKTALK_AGENT_HELM_KUBE_CONTEXT", "onprem")
    monkeypatch.setenv("WRKTALK_AGENT_HELM_KUBECONFIG", "/etc/wrktalk/kubeconfig")
    monkeypatch.setenv("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["--set-string", "image.tag=a b"]')
    monkeypatch.setenv("WRKTALK_AGENT_HELM_BINARY", "/opt/helm/bin/helm")
    monkeypatch.setenv("WRKTALK_AGENT_HELM_HISTORY_MAX", "0")
    settings = HelmSettings()
    assert settings.release_name == "wrktalk-prod"
    assert settings.timeout_seconds == 5400
    assert settings.kube_context == "onprem"
    assert str(settings.kubeconfig) == "/etc/wrktalk/kubeconfig"
    assert settings.extra_args == ["--set-string", "image.tag=a b"]
    assert settings.binary == "/opt/helm/bin/helm"
    assert settings.history_max == 0


def test_namespace_from_kube_namespace_or_helm_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_HELM_NAMESPACE", "from-helm")
    assert HelmSettings().namespace == "from-helm"
    monkeypatch.setenv("WRKTALK_AGENT_KUBE_NAMESPACE", "from-kube")
    assert HelmSettings().namespace == "from-kube"  # the shared variable wins


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("2m30s", 150)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "10 m", "-5m", "5d", "m", "1h-30m", "ten minutes"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="Go duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WRKTALK_AGENT_HELM_RELEASE_NAME", "WrkTalk", "release name"),
        ("WRKTALK_AGENT_HELM_RELEASE_NAME", "a" * 54, "at most 53"),
        ("WRKTALK_AGENT_HELM_RELEASE_NAME", "wrktalk;rm", "release name"),
        ("WRKTALK_AGENT_HELM_RELEASE_NAME", "-wrktalk", "release name"),
        ("WRKTALK_AGENT_HELM_TIMEOUT", "10", "Go duration"),
        ("WRKTALK_AGENT_HELM_TIMEOUT", "0s", "longer than zero"),
        ("WRKTALK_AGENT_HELM_HISTORY_MAX", "-1", "greater than or equal to 0"),
        ("WRKTALK_AGENT_HELM_EXTRA_ARGS", "--set a=b", "JSON list"),
        ("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["--set", "a=b\\nc"]', "newline"),
        ("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["--timeout=1h"]', "set WRKTALK_AGENT_HELM_TIMEOUT"),
        ("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["-n", "other"]', "set WRKTALK_AGENT_KUBE_NAMESPACE"),
        ("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["--debug"]', "WRKTALK_AGENT_LOG_LEVEL"),
        (
            "WRKTALK_AGENT_HELM_EXTRA_ARGS",
            '["--kube-token=t0k3n"]',
            "WRKTALK_AGENT_HELM_KUBECONFIG",
        ),
        ("WRKTALK_AGENT_HELM_KUBE_CONTEXT", "--insecure", "not start with '-'"),
        ("WRKTALK_AGENT_HELM_BINARY", "", "non-empty"),
    ],
)
def test_bad_values_are_one_readable_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        HelmSettings()
    # what the operator sees: the core's formatting of the same error
    with pytest.raises(SettingsError) as caught:
        load_backend_settings(HelmDeployer)
    assert len(caught.value.lines) == 1
    line = caught.value.lines[0]
    assert line.startswith(f"{variable}: ")
    assert message in line


@pytest.mark.parametrize("value", ["Wrktalk", "wrk_talk", "a" * 64, "-x"])
def test_bad_namespace(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_KUBE_NAMESPACE", value)
    with pytest.raises(ValidationError, match="Kubernetes namespace"):
        HelmSettings()


def test_bad_namespace_line_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_KUBE_NAMESPACE", "Bad_NS")
    with pytest.raises(SettingsError) as caught:
        load_backend_settings(HelmDeployer)
    assert caught.value.lines[0].startswith("WRKTALK_AGENT_KUBE_NAMESPACE: ")


def test_registered_through_the_entry_point() -> None:
    registry = PluginRegistry()
    backend = registry.get("deployer", "helm")
    assert backend.cls is HelmDeployer
    info = registry.plugins["helm"]
    assert info.distribution == "wrktalk-agent-helm"
    assert info.hooks == ["wrktalk_register_deployers"]


def test_instantiated_by_the_core_with_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_HELM_TIMEOUT", "90s")
    context = PluginContext(agent_id="a", installation="i", work_dir=None, directory=None)  # type: ignore[arg-type]
    deployer = PluginRegistry().instantiate("deployer", "helm", context)
    assert isinstance(deployer, HelmDeployer)
    assert deployer.settings.timeout_seconds == 90


# -- EXTRA_ARGS: flags that print secrets or choose another cluster ---------------------
#: each refused flag, the forms pflag accepts for it, and what the refusal must name
OUTPUT_FLAG_FORMS = [
    (["--debug"], "WRKTALK_AGENT_LOG_LEVEL"),
    (["--debug=true"], "WRKTALK_AGENT_LOG_LEVEL"),
    (["--output", "json"], "the task result"),
    (["--output=yaml"], "the task result"),
    (["-o", "json"], "the task result"),
    (["-o=json"], "the task result"),
    (["-oyaml"], "the task result"),
]
CONNECTION_FLAG_FORMS = {
    "--kube-apiserver": ("https://10.0.0.1:6443", "`server:`"),
    "--kube-token": ("t0k3n-do-not-log", "`token:`"),
    "--kube-as-user": ("someone-else", "`as:`"),
    "--kube-as-group": ("system:masters", "`as-groups:`"),
    "--kube-ca-file": ("/tmp/other-ca.pem", "`certificate-authority:`"),
    "--kube-tls-server-name": ("other.example", "`tls-server-name:`"),
    "--kube-insecure-skip-tls-verify": ("true", "`insecure-skip-tls-verify:`"),
}


def refusal(monkeypatch: pytest.MonkeyPatch, extra_args: list[str]) -> str:
    """The one line an operator gets for these EXTRA_ARGS."""
    monkeypatch.setenv("WRKTALK_AGENT_HELM_EXTRA_ARGS", json.dumps(extra_args))
    with pytest.raises(SettingsError) as caught:
        load_backend_settings(HelmDeployer)
    [line] = caught.value.lines
    assert line.startswith("WRKTALK_AGENT_HELM_EXTRA_ARGS: ")
    return line


@pytest.mark.parametrize(("extra_args", "named"), OUTPUT_FLAG_FORMS)
def test_extra_args_refuse_flags_that_print_values_and_manifests(
    monkeypatch: pytest.MonkeyPatch, extra_args: list[str], named: str
) -> None:
    line = refusal(monkeypatch, ["--set-string", "a=b", *extra_args])
    assert "is not allowed" in line
    assert "values" in line
    assert named in line


@pytest.mark.parametrize("flag", list(CONNECTION_FLAG_FORMS))
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_extra_args_refuse_connection_flags_and_name_the_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, flag: str, form: str
) -> None:
    value, field = CONNECTION_FLAG_FORMS[flag]
    extra_args = [flag, value] if form == "separate" else [f"{flag}={value}"]
    line = refusal(monkeypatch, extra_args)
    assert line.startswith(f"WRKTALK_AGENT_HELM_EXTRA_ARGS: '{flag}' is not allowed: ")
    assert "WRKTALK_AGENT_HELM_KUBECONFIG" in line
    assert field in line
    assert value not in line  # a token must not reach the agent's log


def test_every_refused_flag_has_a_test() -> None:
    tested = {args[0].split("=")[0] for args, _ in OUTPUT_FLAG_FORMS}
    assert set(OUTPUT_FLAGS) <= tested
    assert set(CONNECTION_FLAGS) == set(CONNECTION_FLAG_FORMS)
