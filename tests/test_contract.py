"""The backend contract is declared once (wrktalk_agent/contract.py): the registry, the
base classes, the protocols and the core's lookups of optional methods follow it."""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path
from typing import ClassVar

import pytest

from wrktalk_agent import contract, interfaces
from wrktalk_agent.contract import CONTRACTS, DEPLOYER, NOTIFIER
from wrktalk_agent.errors import PluginError
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, BaseNotifier, DeployOutcome, LiveState
from wrktalk_agent.testing import registry_with

CORE = Path(contract.__file__).parent


def _plugin(name: str, deployer: type | None = None, notifier: type | None = None) -> object:
    module = types.ModuleType(name)
    if deployer is not None:

        @hookimpl
        def wrktalk_register_deployers(register):  # type: ignore[no-untyped-def]
            register(deployer)

        module.wrktalk_register_deployers = wrktalk_register_deployers  # type: ignore[attr-defined]
    if notifier is not None:

        @hookimpl
        def wrktalk_register_notifiers(register):  # type: ignore[no-untyped-def]
            register(notifier)

        module.wrktalk_register_notifiers = wrktalk_register_notifiers  # type: ignore[attr-defined]
    return module


class _Deployer(BaseDeployer):
    name: ClassVar[str] = "near"

    async def deploy(self, request: object) -> DeployOutcome:
        return DeployOutcome()

    async def rollback(self, request: object) -> DeployOutcome:
        return DeployOutcome()


@pytest.mark.parametrize(
    ("method", "meant"),
    [("valdiate", "validate"), ("live_releases", "live_release"), ("prepair", "prepare"),
     ("describe_change", "describe_changes")],
)  # fmt: skip
def test_a_near_miss_of_an_optional_deployer_method_is_refused_with_a_hint(
    method: str, meant: str
) -> None:
    async def misspelled(self: object) -> LiveState:
        return LiveState(None, "absent")

    cls = type("Typo", (_Deployer,), {"name": "typo", method: misspelled})
    with pytest.raises(PluginError) as refused:
        registry_with(_plugin(f"typo_{method}", deployer=cls))
    assert f"method {method!r} is not part of the deployer contract" in str(refused.value)
    assert f"did you mean {meant!r}?" in str(refused.value)


def test_a_near_miss_of_the_notifier_s_deliver_is_refused() -> None:
    class Loud(BaseNotifier):
        name: ClassVar[str] = "loud"

        async def notify(self, event: object) -> list[object]:
            return []

        async def delivr(self, event: object, attempt: object) -> list[object]:
            return []

    with pytest.raises(PluginError, match="'delivr' is not part of the notifier contract"):
        registry_with(_plugin("loud_plugin", notifier=Loud))


def test_helpers_that_are_not_near_misses_are_fine() -> None:
    class Helpful(_Deployer):
        name: ClassVar[str] = "helpful"

        async def validate(self, request: object) -> list[str]:
            return []

        async def validated_images(self) -> list[str]:  # close to a method it defines
            return []

        async def upload(self) -> None:
            pass

        def live_releases(self) -> list[str]:  # not a coroutine: a plain helper
            return []

    registry = registry_with(_plugin("helpful_plugin", deployer=Helpful))
    assert registry.names("deployer") == ["helpful"]


def test_the_base_classes_leave_abstract_exactly_the_required_methods() -> None:
    bases = {
        "deployer": interfaces.BaseDeployer,
        "maintenance handler": interfaces.BaseMaintenanceHandler,
        "notifier": interfaces.BaseNotifier,
    }
    for kind, base in bases.items():
        declared = CONTRACTS[kind]
        # check() has a default that reports nothing; everything else required is abstract
        assert base.__abstractmethods__ == set(declared.required) - {"check"}, kind
        for name in declared.optional:
            assert not hasattr(base, name), f"{base.__name__} must not define optional {name}"


def test_the_protocols_declare_the_required_methods_with_the_declared_signatures() -> None:
    protocols = {
        "deployer": interfaces.Deployer,
        "maintenance handler": interfaces.MaintenanceHandler,
        "notifier": interfaces.Notifier,
    }
    for kind, protocol in protocols.items():
        declared = CONTRACTS[kind]
        found = {n for n, m in vars(protocol).items() if inspect.iscoroutinefunction(m)}
        assert found == set(declared.required), kind
        for name in declared.required:
            parameters = list(inspect.signature(getattr(protocol, name)).parameters)[1:]
            signature = declared.method(name).signature
            assert signature.startswith(f"async {name}(")
            assert [p.split(":")[0] for p in _params(signature)] == parameters, (kind, name)


def _params(signature: str) -> list[str]:
    inside = signature.split("(", 1)[1].rsplit(")", 1)[0]
    return [p.strip() for p in inside.split(",") if p.strip()]


def test_an_optional_method_is_looked_up_only_by_a_declared_name() -> None:
    class WithLive(_Deployer):
        async def live_release(self) -> LiveState:
            return LiveState(None, "absent")

    backend = WithLive(None, None)  # type: ignore[arg-type]
    assert DEPLOYER.optional_method(backend, "live_release") is not None
    assert DEPLOYER.optional_method(backend, "validate") is None
    with pytest.raises(KeyError, match="'live_releases' is no deployer method"):
        DEPLOYER.optional_method(backend, "live_releases")
    with pytest.raises(KeyError, match="required"):
        DEPLOYER.optional_method(backend, "deploy")
    assert NOTIFIER.optional == ("deliver",)


def test_the_core_looks_up_optional_methods_only_through_the_contract() -> None:
    """No getattr/hasattr with an optional method's name outside contract.py: those were
    the four places a typo hid in."""
    optional = {name for c in CONTRACTS.values() for name in c.optional}
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in optional
            ):
                offenders.append(f"{path.relative_to(CORE)}:{node.lineno} {node.args[1].value}")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "optional_method"
                and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
            ):
                assert node.args[1].value in optional, f"{path}:{node.lineno}"
    assert offenders == []


def test_the_hookspecs_name_every_declared_method() -> None:
    from wrktalk_agent import hookspecs

    for declared in CONTRACTS.values():
        doc = inspect.getdoc(getattr(hookspecs, declared.hook)) or ""
        for name in declared.names:
            assert f"{name}(" in doc, f"{declared.hook} docstring does not name {name}()"
