"""The layering of tasker/ (issue #13): dependencies run one way, and nothing imports the façade.

façade (``_manager``) → lifecycle (``_shutdown``) → actors (``_supervisor``,
``_scaler``, ``_worker``, ``_pool``) → core (``_core``) → values. Imports under
``TYPE_CHECKING`` count: they are dependencies a reader must follow too.
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


ACTORS = ("_worker", "_supervisor", "_scaler", "_pool")


def test_actors_see_the_core_not_the_facade() -> None:
    graph = core_modules()
    for actor in ACTORS:
        assert "_core" in graph[actor], actor
        assert "_manager" not in graph[actor], actor


def test_the_lifecycle_sits_between_the_facade_and_the_actors() -> None:
    """The façade calls into ``_shutdown``; ``_shutdown`` never calls back into the façade."""
    graph = core_modules()
    assert "_shutdown" in graph["_manager"]
    assert "_manager" not in graph["_shutdown"]
    assert "_core" in graph["_shutdown"]
    importers = {name for name, deps in graph.items() if "_shutdown" in deps}
    assert importers == {"_manager"}, importers  # the actors and the core never see it


def test_the_facade_holds_no_lifecycle() -> None:
    """stop/kill/teardown live in ``_shutdown``: the façade only hands those calls over."""
    tree = ast.parse((PACKAGE / "_manager.py").read_text())
    names = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    lifecycle = {"_kill_now", "_graceful", "_teardown", "_await", "_resume", "_Deadline", "_call_back", "_watch_parent"}
    assert not names & lifecycle, names & lifecycle
