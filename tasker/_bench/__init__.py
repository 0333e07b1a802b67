"""``python -m tasker bench``: tasker side by side with plain-gevent baselines.

The scenarios B1-B11 and their targets are those of ``BENCH.md``. Machines are shared
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
``_idle`` (B7), ``_scrape`` (B8: the loopback server and the HTTP clients),
``_cancel`` (B9, B10), ``_drain`` (B11), ``_scale`` (the scale figures), ``_plot``
(their SVG chart) and ``_cli`` (the table, the targets and :func:`main`). This package
re-exports what the command, the benchmarks and the tests use.
"""

from __future__ import annotations

from ._cancel import BreakOutResult, CancelResult, break_out_cost, cancel_cost
from ._cli import Results, Row, Target, format_table, main
from ._collector import CollectorResult, collector_costs, deep_size, record_loop, warm_collector
from ._drain import DrainResult, drain_queue
from ._idle import MemoryResult, idle_memory
from ._impls import BARE, POOL, SPAWN, TASKER, THREADS, BareActorPool, Impl, ThreadPoolProcess, make_impl, percentiles
from ._plot import Panel, Series, svg
from ._scale import LifecycleResult, TaskCost, growth, lifecycle, task_cost
from ._scaler import ScalerResult, scaler_response
from ._scrape import AIOHTTP, CLIENTS, ScrapeRun, ServerFarm, aiohttp_available, scrape, scrape_all
from ._sizes import DEFAULT, FULL, QUICK, SIZES, Sizes
from ._throughput import Run, measure, task_count, warm_up, workload

__all__ = [
    "AIOHTTP",
    "BARE",
    "CLIENTS",
    "BreakOutResult",
    "CancelResult",
    "DrainResult",
    "LifecycleResult",
    "Panel",
    "Results",
    "ScrapeRun",
    "Series",
    "ServerFarm",
    "TaskCost",
    "aiohttp_available",
    "break_out_cost",
    "cancel_cost",
    "drain_queue",
    "growth",
    "lifecycle",
    "scrape",
    "scrape_all",
    "svg",
    "task_cost",
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
