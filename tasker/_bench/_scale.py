"""The scale figures: how tasker's costs grow with workers and with what is queued.

- per-task cost against the number of workers (no-op tasks in bulk, tasker and the
  bare actor pool side by side);
- start-up, ``stop()`` and ``kill()`` time, and memory per idle worker, at many workers
  (each count in a fresh child process, :func:`_lifecycle`);
- memory per pending task comes from B11.

Every figure is per worker or per task, so a line that rises with the count is a
super-linear path: :func:`growth` says by how much.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

import attrs
import gevent

from .._config import Config
from .._manager import TaskManager
from ._impls import BARE, TASKER, _child_env, make_impl
from ._memory import current_rss

__all__ = ["LifecycleResult", "TaskCost", "growth", "lifecycle", "task_cost"]


@attrs.frozen
class TaskCost:
    """Per-task cost of ``tasks`` no-op tasks in bulk on ``workers`` workers."""

    impl: str
    workers: int
    tasks: int
    seconds: float

    @property
    def per_task(self) -> float:
        return self.seconds / self.tasks


@attrs.frozen
class LifecycleResult:
    """Start-up, ``stop()`` and ``kill()`` of a manager with ``workers`` idle workers."""

    workers: int
    start: float  # seconds: TaskManager(config) until every worker is parked
    stop: float  # seconds: stop() of the idle manager
    kill: float  # seconds: kill() of another idle manager of the same size
    idle_bytes: int  # RSS added by the idle workers (greenlets included)

    @property
    def bytes_per_worker(self) -> float:
        return self.idle_bytes / self.workers


def task_cost(impl: str, workers: int, tasks: int) -> TaskCost:
    """Per-task cost of ``impl`` (tasker or the bare actor pool) with ``workers`` workers."""
    runner = make_impl(impl)
    runner.start(workers)
    try:
        runner.bulk(min(tasks, max(1000, workers)), False)  # warm: every worker has run and parked
        gc.collect()
        start = time.perf_counter()
        runner.bulk(tasks, False)
        seconds = time.perf_counter() - start
    finally:
        runner.close()
    return TaskCost(impl, workers, tasks, seconds)


def _config(workers: int) -> Config[object]:
    return Config(on_create=object, worker_count=workers, max_worker_count=workers, resource_pool_size=0)


def _lifecycle(workers: int) -> dict[str, float]:
    """In a fresh process: time start-up, stop() and kill() with ``workers`` idle workers."""
    gc.collect()
    before = current_rss()
    start = time.perf_counter()
    manager: TaskManager[object, None] = TaskManager(_config(workers))
    gevent.idle()
    started = time.perf_counter() - start
    if len(manager._mailbox.idle) != workers:
        raise RuntimeError(f"only {len(manager._mailbox.idle)} of {workers} workers parked")
    gc.collect()
    idle_bytes = current_rss() - before
    start = time.perf_counter()
    manager.stop()
    stopped = time.perf_counter() - start
    del manager
    gc.collect()
    other: TaskManager[object, None] = TaskManager(_config(workers))
    gevent.idle()
    start = time.perf_counter()
    other.kill()
    killed = time.perf_counter() - start
    return {"start": started, "stop": stopped, "kill": killed, "idle": idle_bytes}


def lifecycle(workers: int) -> LifecycleResult:
    """Start-up, stop() and kill() at ``workers`` idle workers, in a child process."""
    code = f"import json; from tasker._bench._scale import _lifecycle; print(json.dumps(_lifecycle({workers:d})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_child_env(), timeout=600
    ).stdout
    reply = json.loads(out.strip().splitlines()[-1])
    return LifecycleResult(workers, reply["start"], reply["stop"], reply["kill"], int(reply["idle"]))


def growth(small: tuple[int, float], large: tuple[int, float]) -> float:
    """How much a per-unit cost grew from ``small`` to ``large`` (count, cost): 1.0 is linear."""
    return large[1] / small[1] if small[1] > 0 else float("inf")


IMPLS = (TASKER, BARE)
