"""``python -m tasker bench``: tasker side by side with plain-gevent baselines.

The scenarios B1-B7 and their targets are those of ``BENCH.md``. Machines are shared
and noisy, so every target is a ratio measured in the same run against a baseline
implemented here in a few lines of plain gevent — never an absolute time:

- **spawn-per-task**: ``gevent.spawn(fn)`` per task, then join;
- **gevent Pool**: ``gevent.pool.Pool(W).spawn(fn)`` per task, then join;
- **bare actor pool**: ``W`` long-lived greenlets taking ``(fn, AsyncResult)`` from one
  ``gevent.queue.SimpleQueue`` — the floor of this design in pure Python, and the
  reference of B1-B4;
- **ThreadPoolExecutor** under ``gevent.monkey.patch_all()``. Monkey-patching is
  process-wide, so it runs in a child process driven over a pipe.

The same code serves the command line (:func:`main`) and ``bench/test_benchmarks.py``
(pytest-benchmark), so the two always measure the same thing.

One module per role: ``_sizes`` (how big each scenario is), ``_memory`` (RSS
readings), ``_impls`` (the implementations, their tasks and the ThreadPoolExecutor
child process), ``_throughput`` (B1-B4), ``_scaler`` (B5), ``_collector`` (B6),
``_idle`` (B7) and ``_cli`` (the table, the targets and :func:`main`). This package
re-exports what the command, the benchmarks and the tests use.
"""

from __future__ import annotations

from ._cli import Row, Target, format_table, main
from ._collector import CollectorResult, collector_costs, deep_size, record_loop, warm_collector
from ._idle import MemoryResult, idle_memory
from ._impls import BARE, POOL, SPAWN, TASKER, THREADS, BareActorPool, Impl, ThreadPoolProcess, make_impl, percentiles
from ._scaler import ScalerResult, scaler_response
from ._sizes import DEFAULT, FULL, QUICK, SIZES, Sizes
from ._throughput import Run, measure, task_count, warm_up, workload

__all__ = [
    "BARE",
    "DEFAULT",
    "FULL",
    "POOL",
    "QUICK",
    "SIZES",
    "SPAWN",
    "TASKER",
    "THREADS",
    "BareActorPool",
    "CollectorResult",
    "Impl",
    "MemoryResult",
    "Row",
    "Run",
    "ScalerResult",
    "Sizes",
    "Target",
    "ThreadPoolProcess",
    "collector_costs",
    "deep_size",
    "format_table",
    "idle_memory",
    "main",
    "make_impl",
    "measure",
    "percentiles",
    "record_loop",
    "scaler_response",
    "task_count",
    "warm_collector",
    "warm_up",
    "workload",
]
