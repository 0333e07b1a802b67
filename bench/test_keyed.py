"""Keyed dispatch cost with 1, 1,000 and 100,000 distinct keys, as a ratio to unkeyed dispatch.

Under pytest-benchmark (``pytest bench/test_keyed.py --benchmark-only``) one benchmark
per key count, grouped: 20,000 no-op tasks per round. As a script,
``python bench/test_keyed.py [--tasks N] [--repeat R]`` prints the ratios: one manager
of 8 workers with ``key_concurrency=4`` gets ``N`` no-op tasks submitted in bulk and
waited for, unkeyed, then with their keys drawn round-robin from 1, 1k and 100k distinct
keys; the rounds are interleaved and the best of ``R`` kept, so the ratios hold on a
noisy machine. With one key the limit binds (8 workers, 4 slots): most messages wait in
the key's backlog and are admitted one by one, the dearest path; with 100k keys every
message makes and forgets its key's record. O(1) dispatch shows as ratios that do not
grow with the number of keys.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

import tasker

KEY_COUNTS = (1, 1_000, 100_000)


def noop(ctx: tasker.Context, resource: object) -> None:
    return None


def one_round(manager: tasker.TaskManager[int, None], tasks: int, keys: int | None) -> float:
    """Seconds to submit ``tasks`` no-ops (keys round-robin over ``keys``) and get every reply."""
    submit = manager.submit
    started = time.perf_counter()
    if keys is None:
        replies = [submit(noop) for _ in range(tasks)]
    else:
        replies = [submit(noop, key=i % keys) for i in range(tasks)]
    gevent.wait(replies)
    elapsed = time.perf_counter() - started
    assert all(r.successful() for r in replies)
    return elapsed


def new_manager() -> tasker.TaskManager[int, None]:
    config = tasker.Config(
        on_create=lambda: 0, worker_count=8, max_worker_count=8, resource_pool_size=0, key_concurrency=4
    )
    return tasker.TaskManager(config)


def measure(tasks: int, repeat: int, key_counts: tuple[int, ...] = KEY_COUNTS) -> dict[int | None, float]:
    """Best seconds per task for unkeyed (``None``) and each key count."""
    best: dict[int | None, float] = {}
    with new_manager() as manager:
        one_round(manager, min(tasks, 1000), None)  # warm up
        for _ in range(repeat):
            for keys in (None, *key_counts):
                seconds = one_round(manager, tasks, keys) / tasks
                best[keys] = min(best.get(keys, seconds), seconds)
    return best


def report(best: dict[int | None, float], say: Callable[[str], object] = print) -> None:
    unkeyed = best[None]
    say(f"{'keys':>9}  {'us/task':>8}  {'vs unkeyed':>10}")
    for keys, seconds in best.items():
        name = "unkeyed" if keys is None else f"{keys:,}"
        say(f"{name:>9}  {seconds * 1e6:8.2f}  {seconds / unkeyed:10.2f}")


@pytest.mark.parametrize("keys", [None, *KEY_COUNTS], ids=lambda k: "unkeyed" if k is None else f"{k}-keys")
def test_keyed_dispatch(benchmark: Any, keys: int | None) -> None:
    """Dispatch cost of no-op tasks, by the number of distinct keys they carry."""
    tasks = 20_000 if benchmark.enabled else 200
    benchmark.group = "keyed dispatch"
    with new_manager() as manager:
        manager.submit(noop).get()
        benchmark.pedantic(one_round, args=(manager, tasks, keys), rounds=3 if benchmark.enabled else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per round (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each, best kept (default 3)")
    args = parser.parse_args()
    report(measure(args.tasks, args.repeat))


if __name__ == "__main__":
    main()
