"""The layering of tasker/ (issue #13): dependencies run one way, and nothing imports the façade.

façade (``_manager``) → actors (``_supervisor``, ``_scaler``, ``_worker``, ``_pool``)
→ core (``_core``) → values. Imports under ``TYPE_CHECKING`` count: they are
dependencies a reader must follow too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tasker"
ABOVE_THE_CORE = {"__init__", "__main__", "testing"}  # the public surface and the programs
PROGRAMS = ("_bench", "_demo", "contrib")


def core_modules() -> dict[str, set[str]]:
    """Each private module directly under tasker/ and the sibling modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[name] = deps
    return graph


def test_no_import_cycle() -> None:
    graph = core_modules()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done or name not in graph:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_only_the_package_imports_the_facade() -> None:
    importers = {name for name, deps in core_modules().items() if "_manager" in deps}
    assert importers <= ABOVE_THE_CORE, importers


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_core_never_imports_the_programs(program: str) -> None:
    importers = {name for name, deps in core_modules().items() if program in deps}
    assert importers <= ABOVE_THE_CORE, importers


def test_actors_see_the_core_not_the_facade() -> None:
    graph = core_modules()
    for actor in ("_worker", "_supervisor", "_scaler", "_pool"):
        assert "_core" in graph[actor], actor
        assert "_manager" not in graph[actor], actor
