"""Shared fixtures: a watchdog on every test, and a check that no manager is left alive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest

import tasker
from tasker import TaskManager

WATCHDOG_SECONDS = 20


def manager_greenlets(manager: TaskManager[Any, Any]) -> list[gevent.Greenlet]:
    """Every greenlet the manager started that is still alive."""
    shutdown = manager._shutdown
    candidates = [manager._supervisor.greenlet, shutdown.watcher, shutdown.destroyer, shutdown.resumer]
    if manager._scaler is not None:
        candidates.append(manager._scaler.greenlet)
    candidates += [w.greenlet for w in manager._supervisor.workers.values()]
    return [g for g in candidates if g is not None and not g.dead]


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Fail a test that blocks for longer than WATCHDOG_SECONDS instead of hanging CI."""
    with gevent.Timeout(WATCHDOG_SECONDS, AssertionError(f"test blocked for over {WATCHDOG_SECONDS} s")):
        yield


@pytest.fixture(autouse=True)
def no_leftover_managers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[TaskManager[Any, Any]]]:
    """Fail a test that leaves a manager running or a manager greenlet alive."""
    created: list[TaskManager[Any, Any]] = []
    original = TaskManager.__init__

    def recording_init(self: TaskManager[Any, Any], config: tasker.Config[Any]) -> None:
        created.append(self)
        try:
            original(self, config)
        except BaseException:
            created.remove(self)  # a constructor that raised leaves nothing running
            raise

    monkeypatch.setattr(TaskManager, "__init__", recording_init)
    yield created
    problems = []
    for manager in created:
        if not manager._shutdown.finished.is_set():
            problems.append(f"{manager!r} left running")
            if not manager._shutdown.kill_called:
                manager.kill()
        alive = manager_greenlets(manager)
        if alive:
            problems.append(f"{manager!r} left greenlets alive: {alive}")
    assert not problems, problems
