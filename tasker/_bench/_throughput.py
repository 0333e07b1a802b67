"""B1-B4: throughput and latency, one timed run of one implementation at a time.

B4 runs twice: **cold** (``"B4"``), every worker parked before the burst, and **warm**
(``"B4w"``), the burst arriving while every worker is still busy with one sleeping task.
Cold is the worst case of a pool whose workers all wait on one ``gevent.queue``: its
waiters are removed by ``deque.remove``, O(parked) per wake-up. Warm is the steady
state under load, where nobody is parked.

:func:`workload` says what a scenario runs (its workers and the timed body),
:func:`warm_up` makes the started implementation hot, and :func:`measure` times one
run. The command line and the pytest-benchmark suite drive the same functions.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import attrs

from ._impls import Impl
from ._sizes import Sizes

__all__ = ["Run", "measure", "task_count", "warm_up", "workload"]


@attrs.frozen
class Run:
    """One timed run of a throughput scenario."""

    tasks: int
    seconds: float
    latency: tuple[float, float, float] | None  # p50, p95, p99 submit-to-reply, seconds
    peak_rss: int  # bytes, of the process that ran it

    @property
    def rate(self) -> float:
        """Tasks per second."""
        return self.tasks / self.seconds if self.seconds > 0 else math.inf


def workload(scenario: str, sizes: Sizes) -> tuple[int, Callable[[Impl], tuple[float, float, float] | None]]:
    """Workers and the body of scenario B1-B4 (the part that is timed)."""
    if scenario == "B1":
        return sizes.workers, lambda impl: impl.bulk(sizes.bulk_tasks, False)
    if scenario == "B2":
        per_client = max(1, sizes.client_tasks // sizes.clients)
        return sizes.workers, lambda impl: impl.clients(sizes.clients, per_client)
    if scenario == "B3":
        return sizes.workers, lambda impl: impl.clients(1, sizes.round_trips)
    if scenario in ("B4", "B4w"):
        return sizes.io_workers, lambda impl: impl.bulk(sizes.io_tasks, True)
    raise ValueError(f"not a throughput scenario: {scenario!r}")


def task_count(scenario: str, sizes: Sizes) -> int:
    """How many tasks one run of scenario B1-B4 completes."""
    return {
        "B1": sizes.bulk_tasks,
        "B2": max(1, sizes.client_tasks // sizes.clients) * sizes.clients,
        "B3": sizes.round_trips,
        "B4": sizes.io_tasks,
        "B4w": sizes.io_tasks,
    }[scenario]


def warm_up(scenario: str, impl: Impl, sizes: Sizes) -> None:
    """Run tasks on a started ``impl`` so that the timed run starts hot.

    B4 cold runs one sleeping task per worker first and waits for them: every worker
    is parked when the burst comes (without it, a fresh bare pool would find its queue
    full and never park). B4 warm submits one sleeping task per worker and does not
    wait: every worker is busy when the burst comes.
    """
    if scenario == "B4":
        impl.bulk(sizes.io_workers, True)
    elif scenario == "B4w":
        impl.bulk(sizes.io_workers, True)  # parked: now make every worker busy
        impl.bulk(sizes.io_workers, True, wait=False)
    else:
        impl.bulk(min(1000, sizes.bulk_tasks), False)


def measure(scenario: str, impl: Impl, sizes: Sizes) -> Run:
    """Start ``impl``, warm it up, time one run of ``scenario`` (B1-B4), close it."""
    workers, body = workload(scenario, sizes)
    impl.start(workers)
    try:
        warm_up(scenario, impl, sizes)
        impl.reset_peak()
        gc.collect()  # each run starts from the same collector state, not the last run's leftovers
        start = time.perf_counter()
        latency = body(impl)
        seconds = time.perf_counter() - start
        peak = impl.peak_rss()
    finally:
        impl.close()
    return Run(task_count(scenario, sizes), seconds, latency, peak)
