"""The package's shape: no import cycles, and a protocol core that does no I/O.

The sans-IO modules take events and return actions; a driver (node.py, or the
simulator in tests/sim) does every read of a socket or a clock. This test keeps
them honest: neither they nor anything they import, however indirectly, imports a
module that does I/O, keeps time or touches process-wide state, and no module of
the package imports itself through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "shoal"
SANS_IO = [
    "actions",
    "clock",
    "config",
    "digest",
    "dispatch",
    "errors",
    "eviction",
    "handshake",
    "leases",
    "limits",
    "membership",
    "messages",
    "positions",
    "queries",
    "replica",
    "replication",
    "store",
    "validation",
    "versions",
    "warmboot",
    "wire",
]
FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "threading", "gc", "time"}
DRIVERS = {"shoal.node", "shoal.driver", "shoal.transport", "shoal.housekeeping", "shoal.cache", "shoal.singleflight"}


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


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


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


def _reached(module: str) -> set[str]:
    """The package's modules ``module`` imports, directly or through others, itself included."""
    graph = _graph()
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


@pytest.mark.parametrize("module", SANS_IO)
def test_the_protocol_core_imports_nothing_that_does_io_or_keeps_time(module: str) -> None:
    reached = _reached(f"shoal.{module}")
    for name in sorted(reached):
        imported = {m.split(".")[0] for m in _imports(MODULES[name])}
        assert imported & FORBIDDEN == set(), f"{module} reaches {name}, which imports {imported & FORBIDDEN}"
    # ... and nothing of the package that does (the driver, the public cache, the threads).
    assert reached & DRIVERS == set()


def test_every_module_that_imports_no_io_is_on_the_core_list() -> None:
    """A new sans-IO module is checked from the day it is written, not when someone remembers."""
    pure = set()
    for name in _graph():
        if name.count(".") != 1 or MODULES[name].name in {"__init__.py", "__main__.py"}:
            continue
        reached = _reached(name)
        imported = {m.split(".")[0] for n in reached for m in _imports(MODULES[n])}
        if not imported & (FORBIDDEN | {"os", "pathlib", "msgpack"}) and not reached & DRIVERS:
            pure.add(name.split(".")[1])
    assert pure - set(SANS_IO) == set()


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
