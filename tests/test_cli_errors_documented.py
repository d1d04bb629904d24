"""Every error message the CLI can print has an entry in docs/operator.md's
troubleshooting section (its fixed text, the variable parts written as `…`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fixed_text(node: ast.expr) -> str:
    """The longest constant piece of a message (an f-string's text between the values)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        pieces = [node.value]
    elif isinstance(node, ast.JoinedStr):
        pieces = [v.value for v in node.values if isinstance(v, ast.Constant)]
    elif isinstance(node, ast.BinOp):
        return max((_fixed_text(node.left), _fixed_text(node.right)), key=len)
    else:
        return ""
    return max((p.strip(" ;:,.()") for p in pieces), key=len, default="")


def cli_messages() -> list[str]:
    found = []
    nodes = [
        node
        for path in sorted((ROOT / "wrktalk_agent" / "cli").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
    ]
    for node in nodes:
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        if name in ("Failure", "BadParameter", "HttpPortError"):
            text = _fixed_text(node.args[0])
            if len(text) >= 8:  # messages passed through from elsewhere have their own entries
                found.append(text)
    return sorted(set(found))


def test_every_cli_error_is_in_the_troubleshooting_section() -> None:
    doc = (ROOT / "docs" / "operator.md").read_text()
    section = doc[doc.index("## Troubleshooting by error message") :]
    messages = cli_messages()
    assert len(messages) > 15
    missing = [m for m in messages if m not in section]
    assert not missing, "undocumented CLI errors:\n" + "\n".join(missing)
