"""The project's import rules, read from the source (no import is executed).

1. No import cycle among the project's own modules (``node``, ``simulations``, ``bootstrap``),
   counting imports inside functions too: a cycle hidden in a function body is still a cycle
   (``node.ledger.op`` <-> ``node.ledger.request_op`` was one). Imports under
   ``if TYPE_CHECKING:`` are left out; they never run.
2. Only ``node/p2p/`` imports libp2p (or its ``multiaddr``), so the transport stays behind one
   port that the simulator and the tests can stand in for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "simulations", "bootstrap")
LIBP2P_ROOTS = frozenset({"libp2p", "multiaddr"})
LIBP2P_HOME = "node.p2p"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path`` that can run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            found.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
            found.append((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, line in _imports(path, name):
            if target in modules and target != name:
                graph[name].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    members = set(component)
    edges = [
        f"{a} -> {b} (line {line})"
        for a in component
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return "; ".join(edges)


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The rule below is only as good as the finder: a three-module ring and a self-contained
    # pair must both be found, a chain must not.
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"e": 1}, "e": {"d": 1}, "f": {}}
    graph["g"] = {"a": 1}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from node.ledger import state\n"
        "def f():\n"
        "    from node.ledger.op import Op\n"
        "    from . import hlc\n"
    )
    tmp = tmp_path / "probe.py"
    tmp.write_text(source)
    found = {target for target, _ in _imports(tmp, "node.ledger._layering_probe")}
    assert "node.ledger.op" in found
    assert "node.ledger.hlc" in found
    assert "node.ledger.state" not in found


def test_no_import_cycle_in_the_project() -> None:
    graph = _graph()
    assert len(graph) > 50, "the module walk found too few modules: is ROOT right?"
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(graph, c) for c in cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_only_node_p2p_imports_libp2p(package: str) -> None:
    offenders = []
    for name, path in _modules().items():
        if (
            not name.startswith(package)
            or name == LIBP2P_HOME
            or name.startswith(LIBP2P_HOME + ".")
        ):
            continue
        for target, line in _imports(path, name):
            if target.split(".")[0] in LIBP2P_ROOTS:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, "libp2p outside node/p2p: " + "; ".join(sorted(set(offenders)))


MODULE_LINES_MAX = 600
REASON_PREFIX = "Long on purpose:"


def test_long_modules_say_why() -> None:
    # A module past ~600 lines usually holds more than one concern; where it holds one on
    # purpose, the line after its docstring's title says why, so the next engineer knows
    # whether to split it or to leave it.
    unexplained = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        if len(lines) <= MODULE_LINES_MAX:
            continue
        docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        head = docstring.splitlines()[:4]
        if not any(line.startswith(REASON_PREFIX) for line in head):
            unexplained.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not unexplained, (
        f"modules over {MODULE_LINES_MAX} lines without a '{REASON_PREFIX} ...' line at the top"
        f" of their docstring: {', '.join(sorted(unexplained))}"
    )
