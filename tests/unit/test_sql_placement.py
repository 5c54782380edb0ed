"""SQL where a reader looks for it: in these packages a statement is written in the package's
statements module, not in the code that runs it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Each package and the one module of it that holds its SQL.
PACKAGES = {
    "api": "api/statements.py",
    "runner/cancel": "runner/cancel/statements.py",
    "runner/webhooks": "runner/webhooks/statements.py",
    "runner/worker": "runner/worker/store.py",
}
_SQL = re.compile(r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH)\s")


def _sql_literals(path: Path) -> list[str]:
    """The string literals (f-strings' text parts too) in `path` that begin a statement."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:60]!r}")
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_statements_live_in_the_statements_module(package: str) -> None:
    home = ROOT / PACKAGES[package]
    assert _sql_literals(home), f"{home} holds no statements: is the check still looking?"
    stray = [s for p in sorted((ROOT / package).rglob("*.py")) if p != home for s in _sql_literals(p)]
    assert not stray, f"SQL outside {PACKAGES[package]}:\n" + "\n".join(stray)
