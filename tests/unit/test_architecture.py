"""The tree's rules, checked: imports run one way (no cycle among the project's modules,
function-level imports included), only runner.service imports the API package, the command
line's client needs nothing from the server, and no module is over 500 lines (as `ruff format` lays them out; the OpenAPI
document is data, not logic, and is exempt)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runner", "api")
MAX_LINES = 500
DATA_MODULES = {"api.openapi"}
# Package directions: (importer, imported) pairs that must never occur. The worker uses the
# cancel path, never the reverse; the database tools know neither; the API is reached only
# through the wiring module, and the CLI's client verbs never reach the API.
FORBIDDEN = (
    ("runner.cancel", "runner.worker"),
    ("runner.db", "runner.cancel"),
    ("runner.db", "runner.worker"),
    ("api", "runner.service"),
)
# The client's entry points that start the service (see the client test below).
CLIENT_SERVES = ("runner.client.serving", "runner.client.demo")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module `path` imports, wherever the import stands."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_packages_import_one_way() -> None:
    graph = _graph()
    wrong = sorted(
        (m, d)
        for m, deps in graph.items()
        for d in deps
        for importer, imported in FORBIDDEN
        if _within(m, importer) and _within(d, imported)
    )
    assert wrong == []


def test_the_client_never_imports_the_api() -> None:
    graph = _graph()
    wrong = sorted(
        (m, d)
        for m, deps in graph.items()
        if _within(m, "runner.client") and not m.startswith(CLIENT_SERVES)
        for d in deps
        if _within(d, "api")
    )
    assert wrong == []


def test_only_the_wiring_module_imports_the_api() -> None:
    graph = _graph()
    importers = sorted(
        m
        for m, deps in graph.items()
        if m.startswith("runner") and any(d == "api" or d.startswith("api.") for d in deps)
    )
    assert importers == ["runner.service"]


def test_the_client_needs_nothing_from_the_server() -> None:
    """The CLI's client verbs (everything but `serve`, `migrate` and `demo`, which start the
    service) import neither the API nor the daemon's service modules."""
    graph = _graph()
    server = ("api", "runner.service", "runner.worker", "runner.cancel", "runner.db")
    for module in ("runner.client.http", "runner.client.progress"):
        reachable, todo = set(), [module]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in reachable:
                    reachable.add(dep)
                    todo.append(dep)
        assert not [d for d in reachable if d.startswith(server)], (module, sorted(reachable))


def test_no_module_is_over_500_lines() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if name not in DATA_MODULES and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
