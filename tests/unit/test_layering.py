"""The import directions the layout promises, checked on the source (an import-linter contract as a test).

- `voxfleet` (contracts, clients, CLI) is what the components share: it
  imports no component, except the CLI and `voxfleet up`, which run them;
- the components (`stt_pod`, `stt_router`, `stt_operator`) never import each
  other: they talk over the wire and through Kubernetes objects;
- inside a package, module-level imports form no cycle (imports under
  `TYPE_CHECKING` and inside functions are not module-level).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "voxfleet": REPO / "voxfleet",
    "stt_pod": REPO / "stt_pod",
    "stt_router": REPO / "router" / "stt_router",
    "stt_operator": REPO / "operator" / "stt_operator",
}
COMPONENTS = ("stt_pod", "stt_router", "stt_operator")
RUNS_COMPONENTS = {"voxfleet.cli", "voxfleet.up"}


def modules(package: str) -> dict[str, ast.Module]:
    return {f"{package}.{path.stem}" if path.stem != "__init__" else package: ast.parse(path.read_text())
            for path in sorted(PACKAGES[package].glob("*.py"))}


def imports(tree: ast.Module, module_level: bool) -> set[str]:
    """Modules a file imports: all of them, or only those imported when the module itself is imported."""
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                visit(child, False)
            elif isinstance(child, ast.Import) and (top or not module_level):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0 and (top or not module_level):
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            else:
                visit(child, top)

    visit(tree, True)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_components_never_import_each_other_and_voxfleet_imports_none(package):
    forbidden = set(COMPONENTS) - {package}
    wrong = []
    for name, tree in modules(package).items():
        if name in RUNS_COMPONENTS:
            continue
        wrong += [f"{name} imports {target}" for target in imports(tree, module_level=False)
                  if target.split(".")[0] in forbidden]
    assert not wrong, wrong


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package):
    tree = modules(package)
    graph = {name: {t for t in imports(t_, module_level=True) if t in tree and t != name} for name, t_ in tree.items()}
    cycles = []
    for start in graph:  # a depth-first walk from each module back to itself
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in path:
                    stack.append((nxt, path + [nxt]))
    assert not cycles, cycles[:5]
