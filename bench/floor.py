"""What tasker's per-task contract costs, component by component (the B1 floor).

Run: ``python bench/floor.py``. Each row is the best of 5 timeit runs of 200,000
iterations, in µs per call.
"""

from __future__ import annotations

import time
import timeit
from typing import Any

from gevent.event import AsyncResult

import tasker
from tasker._context import Context
from tasker._message import TaskResult
from tasker._types import TaskLifecycleTimestamps

N = 200_000


def cost(stmt: str, names: dict[str, Any], setup: str = "pass") -> float:
    return min(timeit.repeat(stmt, setup=setup, globals=names, number=N, repeat=5)) / N * 1e6


def main() -> None:
    names: dict[str, Any] = {
        "AsyncResult": AsyncResult,
        "TaskResult": TaskResult,
        "Context": Context,
        "T": TaskLifecycleTimestamps,
        "time": time,
        "fn": lambda ctx, resource: None,
        "root": Context(),
        "collector": tasker.Collector(),
        "stamps": TaskLifecycleTimestamps(1.0, 2.0, 3.0),
    }
    rows = [
        ("AsyncResult() alone (what the bare pool pays)", "AsyncResult()", "pass"),
        ("TaskResult(): the reply that carries the envelope", "TaskResult()", "pass"),
        ("Context(parent) per task", "Context(root)", "pass"),
        ("TaskLifecycleTimestamps(...)", "T(1.0, 2.0, 3.0)", "pass"),
        ("one clock read (time.monotonic; 3 per task)", "time.monotonic()", "pass"),
        ("Collector.record_arrival()", "collector.record_arrival()", "pass"),
        ("Collector.record_completion(stamps)", "collector.record_completion(stamps)", "pass"),
    ]
    for name, stmt, setup in rows:
        print(f"{name:50s} {cost(stmt, names, setup):6.2f} us")


if __name__ == "__main__":
    main()
