"""Artifact layout, settings and registration: no Docker needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from compose_support import ReleaseBuilder
from pydantic import ValidationError

from wrktalk_agent.interfaces import DeployError, PluginContext
from wrktalk_agent.plugins import PluginRegistry, SettingsError, load_backend_settings
from wrktalk_agent_compose import ComposeDeployer, ComposeSettings
from wrktalk_agent_compose.layout import COMPOSE_FILE_NAMES, read_layout

SERVICES = "services:\n  web:\n    image: app:1\n"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.mark.parametrize("name", COMPOSE_FILE_NAMES)
def test_each_compose_file_name_is_found(tmp_path: Path, name: str) -> None:
    layout = read_layout(write(tmp_path, {name: SERVICES}))
    assert layout.compose_file == tmp_path / name
    assert layout.images == ()


def test_bundled_images_are_the_tars_in_images_sorted(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "compose.yaml": SERVICES,
            "images/web.tar": b"x",
            "images/db.tar": b"x",
            "images/README": "not an image",
            "web.tar": b"not in images/",
        },
    )
    layout = read_layout(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in layout.images] == [
        "images/db.tar",
        "images/web.tar",
    ]


def test_missing_compose_file_names_the_expected_files(tmp_path: Path) -> None:
    write(tmp_path, {"sub/docker-compose.yml": SERVICES})  # not at the top level
    with pytest.raises(DeployError) as failure:
        read_layout(tmp_path)
    assert failure.value.system_changed is False
    assert str(failure.value) == (
        "no compose file in the release artifact: expected one of compose.yaml, compose.yml, "
        "docker-compose.yaml, docker-compose.yml at the top level"
    )


def test_two_compose_files_are_ambiguous(tmp_path: Path) -> None:
    write(tmp_path, {"compose.yaml": SERVICES, "docker-compose.yml": SERVICES})
    with pytest.raises(DeployError, match=r"more than one compose file \(compose.yaml, docker"):
        read_layout(tmp_path)


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"docker-compose.yml": "services:\n  web:\n    image: [app\n  db: {}\n"})
    with pytest.raises(DeployError) as failure:
        read_layout(tmp_path)
    assert failure.value.system_changed is False
    assert str(failure.value).startswith("invalid YAML in docker-compose.yml at line 4, column")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("- web\n- db\n", "docker-compose.yml must be a YAML mapping with a 'services' key"),
        ("version: '3'\n", "docker-compose.yml has no 'services' mapping"),
        ("services: []\n", "docker-compose.yml has no 'services' mapping"),
        ("", "docker-compose.yml must be a YAML mapping with a 'services' key"),
    ],
)
def test_compose_file_without_services_is_rejected(
    tmp_path: Path, content: str, problem: str
) -> None:
    write(tmp_path, {"docker-compose.yml": content})
    with pytest.raises(DeployError) as failure:
        read_layout(tmp_path)
    assert str(failure.value) == problem


def test_one_shot_services_are_those_awaited_to_complete(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "compose.yaml": (
                "services:\n"
                "  web:\n"
                "    depends_on:\n"
                "      migrate: {condition: service_completed_successfully}\n"
                "      db: {condition: service_healthy}\n"
                "  worker:\n"
                "    depends_on: [db]\n"
                "  migrate: {}\n"
                "  db: {}\n"
            )
        },
    )
    assert read_layout(tmp_path).one_shot_services == {"migrate"}


async def test_bad_input_fails_before_docker_is_touched(
    make_deployer: Callable[..., ComposeDeployer], builder: ReleaseBuilder, working_dir: Path
) -> None:
    # A docker binary that does not exist: reaching it would fail differently.
    deployer = make_deployer(
        docker_binary="/nonexistent/docker", compose_v1_binary="/nonexistent/dc"
    )
    cases = [
        (builder.request("1.0.0", {"README": "no compose file"}), "no compose file"),
        (builder.request("1.0.0", {"compose.yaml": "services: ["}), "invalid YAML in compose.yaml"),
        (builder.request("1.0.0; rm -rf /", {"compose.yaml": SERVICES}), "invalid release version"),
        (builder.request("--set", {"compose.yaml": SERVICES}), "invalid release version"),
    ]
    for request, problem in cases:
        with pytest.raises(DeployError) as failure:
            await deployer.deploy(request)
        assert problem in str(failure.value)
        assert failure.value.system_changed is False
    assert not working_dir.exists()


@pytest.mark.parametrize("name", ["wrktalk", "wrktalk-prod_2", "0day"])
def test_valid_project_names(name: str) -> None:
    assert ComposeSettings(project_name=name).project_name == name


@pytest.mark.parametrize("name", ["WrkTalk", "wrk talk", "-wrktalk", "_x", "", "wrk;talk", "a.b"])
def test_invalid_project_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="lowercase letters, digits, dashes and underscores"):
        ComposeSettings(project_name=name)


def test_bad_settings_from_the_environment_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_PROJECT_NAME", "My Project")
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_KEEP_RELEASES", "1")
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_COMMAND", "v3")
    with pytest.raises(SettingsError) as failure:
        load_backend_settings(ComposeDeployer)
    variables = sorted(line.split(":")[0] for line in failure.value.lines)
    assert variables == [
        "WRKTALK_AGENT_COMPOSE_COMMAND",
        "WRKTALK_AGENT_COMPOSE_KEEP_RELEASES",
        "WRKTALK_AGENT_COMPOSE_PROJECT_NAME",
    ]


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_WORKING_DIR", str(tmp_path))
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_COMMAND", "v1")
    monkeypatch.setenv("WRKTALK_AGENT_COMPOSE_WAIT_TIMEOUT", "42")
    settings = load_backend_settings(ComposeDeployer)
    assert isinstance(settings, ComposeSettings)
    assert (settings.working_dir, settings.command, settings.wait_timeout) == (tmp_path, "v1", 42)


def test_every_setting_is_documented() -> None:
    undocumented = [n for n, f in ComposeSettings.model_fields.items() if not f.description]
    assert undocumented == []


def test_installed_entry_point_registers_the_deployer(tmp_path: Path) -> None:
    registry = PluginRegistry()
    backend = registry.get("deployer", "compose")
    assert backend.cls is ComposeDeployer
    assert backend.plugin == "compose"
    assert registry.plugins["compose"].distribution == "wrktalk-agent-compose"
    context = PluginContext("a", "i", tmp_path, directory=None)  # type: ignore[arg-type]
    deployer = registry.instantiate("deployer", "compose", context)
    assert isinstance(deployer, ComposeDeployer)
    assert deployer.chart_types == ("compose",)
