"""The shape the core and the bundled plugins keep: small modules, small classes, and
imports that run one way.

A module over :data:`MODULE_LINES` or a class over :data:`CLASS_LINES` has usually taken
on a second job; an import cycle between modules means two of them are one in disguise
and makes their import order matter. Imports inside functions and under
``TYPE_CHECKING`` are not counted: they do not run at import time.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The packages held to these limits: the core and every bundled plugin.
SOURCES = [ROOT / "wrktalk_agent", *sorted((ROOT / "plugins").glob("*/wrktalk_agent_*"))]
MODULE_LINES = 420
CLASS_LINES = 300


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            parts = list(path.relative_to(source.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _top_level_imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports when it is imported."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    statements = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            statements.extend(node.orelse)
        elif isinstance(node, ast.If | ast.Try):
            statements.extend(node.body)
            statements.extend(node.orelse)
            if isinstance(node, ast.Try):
                statements.extend(node.finalbody)
                for handler in node.handlers:
                    statements.extend(handler.body)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    imported.add(f"{base}.{alias.name}")
                elif base in MODULES:
                    imported.add(base)
    imported.discard(name)
    return imported


def test_the_check_sees_every_package() -> None:
    assert "wrktalk_agent.runtime" in MODULES
    assert "wrktalk_agent_helm.deployer" in MODULES
    assert len(MODULES) > 60


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_limit(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MODULE_LINES, f"{name} has {lines} lines (limit {MODULE_LINES})"


def test_no_class_is_over_the_limit() -> None:
    too_big = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert too_big == [], f"classes over {CLASS_LINES} lines: {too_big}"


def test_no_import_cycle() -> None:
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check would see a cycle: two modules importing each other at the top."""
    (tmp_path / "a.py").write_text("from wrktalk_agent import b\n")
    (tmp_path / "b.py").write_text("import wrktalk_agent.a\n")
    fake = {"wrktalk_agent.a": tmp_path / "a.py", "wrktalk_agent.b": tmp_path / "b.py"}
    monkeypatch.setitem(globals(), "MODULES", fake)
    graph = {name: _top_level_imports(name, path) for name, path in fake.items()}
    assert graph == {"wrktalk_agent.a": {"wrktalk_agent.b"}, "wrktalk_agent.b": {"wrktalk_agent.a"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
