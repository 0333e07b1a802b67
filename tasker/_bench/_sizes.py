"""How big each benchmark scenario is: tasks, workers, records, repeats.

:data:`FULL` is BENCH.md, :data:`DEFAULT` fits in a few minutes and :data:`QUICK` is a
smoke test (``--quick``, and ``pytest bench --benchmark-disable``).
"""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT", "FULL", "QUICK", "SIZES", "Sizes"]


@attrs.frozen
class Sizes:
    """How big each scenario is; :data:`FULL` is BENCH.md, :data:`DEFAULT` fits in a few minutes."""

    name: str
    bulk_tasks: int  # B1
    client_tasks: int  # B2, over all clients
    round_trips: int  # B3
    io_workers: int  # B4
    io_tasks: int  # B4
    records: int  # B6
    idle_workers: int  # B7
    repeat: int  # runs of the implementations a target compares; the best is kept
    workers: int = 8  # B1-B3
    clients: int = 100  # B2
    cancel_depths: tuple[int, ...] = (1_000, 100_000, 1_000_000)  # B9: messages queued
    cancels: int = 1_000  # B9: cancels timed at each depth (fewer if the queue is shorter)
    in_flight: int = 50_000  # B10
    drain_tasks: int = 1_000_000  # B11
    scrape_urls: int = 20_000  # B8: requests per run
    scrape_concurrency: tuple[int, ...] = (100, 1_000, 5_000)  # B8: C
    scrape_threads: int = 100  # B8: the ThreadPoolExecutor's C
    scale_workers: tuple[int, ...] = (8, 1_000, 10_000, 50_000)  # per-task cost against workers
    scale_tasks: int = 200_000  # tasks of each per-task-cost run
    scale_idle: tuple[int, ...] = (10_000, 100_000)  # memory per idle worker; start/stop/kill


FULL = Sizes("full", 200_000, 200_000, 100_000, 10_000, 200_000, 1_000_000, 10_000, repeat=3)
DEFAULT = Sizes(
    "default",
    40_000,
    30_000,
    10_000,
    10_000,
    30_000,
    1_000_000,
    10_000,
    repeat=3,
    cancel_depths=(1_000, 10_000, 100_000),
    in_flight=50_000,
    drain_tasks=200_000,
    scrape_urls=5_000,
    scrape_concurrency=(100, 1_000),
    scale_workers=(8, 1_000, 10_000),
    scale_tasks=50_000,
    scale_idle=(10_000, 50_000),
)
QUICK = Sizes(
    "quick",
    2_000,
    2_000,
    500,
    500,
    1_000,
    20_000,
    500,
    repeat=1,
    cancel_depths=(100, 1_000, 10_000),
    cancels=50,
    in_flight=500,
    drain_tasks=2_000,
    scrape_urls=200,
    scrape_concurrency=(20,),
    scrape_threads=20,
    scale_workers=(8, 100),
    scale_tasks=1_000,
    scale_idle=(200, 500),
)
SIZES = {s.name: s for s in (QUICK, DEFAULT, FULL)}
