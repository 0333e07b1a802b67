"""The keyed-dispatch benchmark (``bench/keyed.py``) under pytest-benchmark.

One benchmark per key count, grouped together: ``pytest bench/test_keyed.py
--benchmark-only`` prints dispatch of 20,000 no-op tasks unkeyed and with 1, 1k and
100k distinct keys; ``python bench/keyed.py`` prints the same as ratios to unkeyed.
"""

from __future__ import annotations

from typing import Any

import pytest
from keyed import KEY_COUNTS, noop, one_round

import tasker


@pytest.mark.parametrize("keys", [None, *KEY_COUNTS], ids=lambda k: "unkeyed" if k is None else f"{k}-keys")
def test_keyed_dispatch(benchmark: Any, keys: int | None) -> None:
    """Dispatch cost of no-op tasks, by the number of distinct keys they carry."""
    tasks = 20_000 if benchmark.enabled else 200
    config = tasker.Config(on_create=lambda: 0, worker_count=8, max_worker_count=8, resource_pool_size=0,
                           key_concurrency=4)
    benchmark.group = "keyed dispatch"
    with tasker.TaskManager(config) as manager:
        manager.submit(noop).get()
        benchmark.pedantic(one_round, args=(manager, tasks, keys), rounds=3 if benchmark.enabled else 1)
