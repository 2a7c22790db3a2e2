"""The package's shape: no import cycles, and a protocol core that does no I/O.

The sans-IO modules take events and return actions; a driver (node.py, or the
simulator in tests/sim) does every read of a socket or a clock. This test keeps
them honest: they import none of the modules that do I/O or touch process-wide
state, and no module of the package imports itself through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "shoal"
SANS_IO = [
    "wire",
    "messages",
    "handshake",
    "membership",
    "replication",
    "warmboot",
    "dispatch",
    "replica",
    "actions",
    "leases",
]
FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "threading", "gc", "time"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports at run time (imports under ``if TYPE_CHECKING:`` do not count)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    stem = f"{base}.{child.module}" if child.module else base
                    if child.module:  # "from . import x" imports the submodule x, not the package again
                        found.add(stem)
                    found.update(f"{stem}.{alias.name}" for alias in child.names)
                else:
                    found.add(child.module or "")
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    graph = _graph()
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            walk(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        walk(name, [], done)
    assert cycles == []


@pytest.mark.parametrize("module", SANS_IO)
def test_the_protocol_core_imports_nothing_that_does_io_or_keeps_time(module: str) -> None:
    imported = {name.split(".")[0] for name in _imports(PACKAGE / f"{module}.py")}
    assert imported & FORBIDDEN == set()
    # ... and nothing of the package that does (the driver, the public cache, the threads).
    package_imports = {name for name in _imports(PACKAGE / f"{module}.py") if name.startswith("shoal.")}
    assert not package_imports & {"shoal.node", "shoal.transport", "shoal.housekeeping", "shoal.cache"}


def test_a_local_cache_loads_no_networking() -> None:
    """``import shoal; shoal.Cache()`` is all a process without a cluster pays for: no event loop, no sockets."""
    import subprocess
    import sys

    code = (
        "import sys, shoal\n"
        "c = shoal.Cache(ttl=60, max_entries=10); c.set('k', 1); c.fetch('j', str)\n"
        "print(sorted(m for m in ('asyncio', 'socket', 'ssl', 'selectors') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_naming_node_loads_the_cluster_side() -> None:
    import shoal

    assert shoal.Node.__module__ == "shoal.node"
    with pytest.raises(AttributeError, match="no attribute 'Nodes'"):
        shoal.Nodes  # noqa: B018
