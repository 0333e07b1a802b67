"""B5: how tasker's scaler follows a step of load, on the real clock, in scaler ticks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import attrs
import gevent
from gevent.event import Event

from .._config import Config
from .._manager import TaskManager
from ._impls import _io

__all__ = ["ScalerResult", "scaler_response"]


@attrs.frozen
class ScalerResult:
    """B5: how the scaler followed a step of load, in scaler ticks (burst intervals)."""

    interval: float
    linger_ticks: float
    ticks_to_max: float | None  # None: never reached max_worker_count
    ticks_to_base: float | None  # None: never went back to worker_count
    changes_at_saturation: int  # worker-count changes after reaching max, load steady
    changes_at_partial: int  # worker-count changes under a steady partial load
    tasks: int


def scaler_response(interval: float = 0.02, base: int = 4, top: int = 12, steady_ticks: int = 15) -> ScalerResult:
    """B5 on the real clock: idle -> closed-loop saturation -> idle -> steady partial load.

    Clients loop on blocking ``queue_task`` of ``gevent.sleep(IO_SLEEP)`` tasks: ``3 * top``
    of them saturate the manager, ``(base + top) // 2`` keep a steady partial load. A
    monitor greenlet samples the started workers every millisecond.
    """
    config: Config[object] = Config(
        on_create=object, worker_count=base, max_worker_count=top, burst_interval=interval, resource_pool_size=0
    )
    manager: TaskManager[object, None] = TaskManager(config)
    linger = 10 * interval
    clock = time.monotonic
    samples: list[tuple[float, int]] = []
    done = [0]
    stopping = Event()

    def workers() -> int:
        stats = manager.stats()
        return stats.base_workers + stats.burst_workers

    def monitor() -> None:
        while True:
            samples.append((clock(), workers()))
            gevent.sleep(0.001)

    def client() -> None:
        while not stopping.is_set():
            manager.queue_task(_io)
            done[0] += 1

    def wait_for(predicate: Callable[[], bool], deadline: float) -> float | None:
        while clock() < deadline:
            if predicate():
                return clock()
            gevent.sleep(0.001)
        return None

    def changes(since: float, until: float) -> int:
        counts = [n for t, n in samples if since <= t <= until]
        return sum(1 for a, b in itertools.pairwise(counts) if a != b)

    watcher = gevent.spawn(monitor)
    try:
        gevent.sleep(3 * interval)  # idle ticks first
        step = clock()
        clients = [gevent.spawn(client) for _ in range(3 * top)]
        reached = wait_for(lambda: workers() == top, step + 20 * interval)
        gevent.sleep(steady_ticks * interval)
        saturation_end = clock()
        stopping.set()
        gevent.joinall(clients, raise_error=True)
        load_end = clock()
        based = wait_for(lambda: workers() == base, load_end + linger + 20 * interval)
        stopping.clear()
        clients = [gevent.spawn(client) for _ in range((base + top) // 2)]
        gevent.sleep(10 * interval)  # settle
        partial_start = clock()
        gevent.sleep(steady_ticks * interval)
        partial_end = clock()
        stopping.set()
        gevent.joinall(clients, raise_error=True)
    finally:
        watcher.kill()
        manager.stop()
    return ScalerResult(
        interval=interval,
        linger_ticks=linger / interval,
        ticks_to_max=None if reached is None else (reached - step) / interval,
        ticks_to_base=None if based is None else (based - load_end) / interval,
        changes_at_saturation=changes(reached, saturation_end) if reached is not None else -1,
        changes_at_partial=changes(partial_start, partial_end),
        tasks=done[0],
    )
