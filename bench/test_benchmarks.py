"""BENCH.md's scenarios B1-B11 under pytest-benchmark: tasker side by side with baselines.

One benchmark per (scenario, implementation), grouped by scenario so that
``pytest bench/ --benchmark-only`` prints each comparison as one table. The scenarios
and the plain-gevent baselines live in ``tasker._bench``, shared with
``python -m tasker bench`` (which also prints the ratios and checks the targets).
Each round of B1-B4 times only the workload: the implementation is started and warmed
up before the rounds and closed after them.

``pytest bench --benchmark-disable`` is CI's smoke mode: every body runs once, at
tiny sizes.
"""

from __future__ import annotations

from typing import Any

import pytest

from tasker import Collector
from tasker._bench import (
    AIOHTTP,
    BARE,
    POOL,
    SPAWN,
    TASKER,
    THREADS,
    Panel,
    Series,
    ServerFarm,
    Sizes,
    ThreadPoolProcess,
    aiohttp_available,
    break_out_cost,
    cancel_cost,
    deep_size,
    drain_queue,
    idle_memory,
    lifecycle,
    make_impl,
    record_loop,
    scaler_response,
    scrape,
    svg,
    task_cost,
    task_count,
    warm_collector,
    warm_up,
    workload,
)


def run_throughput(
    benchmark: Any, scenario: str, name: str, sizes: Sizes, child: ThreadPoolProcess | None = None
) -> None:
    """Benchmark the workload of ``scenario`` (B1-B4) on the implementation ``name``."""
    impl = make_impl(name, child)
    workers, body = workload(scenario, sizes)
    impl.start(workers)
    try:
        warm_up(scenario, impl, sizes)
        latency = benchmark.pedantic(body, args=(impl,), rounds=sizes.repeat)
    finally:
        impl.close()
    benchmark.extra_info.update(tasks=task_count(scenario, sizes), workers=workers)
    if latency is not None:
        benchmark.extra_info.update(zip(("p50_us", "p95_us", "p99_us"), (s * 1e6 for s in latency), strict=True))


B1 = pytest.mark.benchmark(group="B1 no-op tasks in bulk, 8 workers")
B2 = pytest.mark.benchmark(group="B2 100 clients, blocking submit-and-wait, 8 workers")
B3 = pytest.mark.benchmark(group="B3 one client, blocking round trip, 8 workers")
B4 = pytest.mark.benchmark(group="B4 gevent.sleep(0.01) tasks in bulk, 10k workers, cold (all parked first)")
B4W = pytest.mark.benchmark(group="B4 gevent.sleep(0.01) tasks in bulk, 10k workers, warm (all busy)")
B5 = pytest.mark.benchmark(group="B5 scaler step response")
B6 = pytest.mark.benchmark(group="B6 collector")
B7 = pytest.mark.benchmark(group="B7 idle workers")
B8 = pytest.mark.benchmark(group="B8 loopback scraping, 20 ms answers")
B9 = pytest.mark.benchmark(group="B9 cancel() of queued messages")
B10 = pytest.mark.benchmark(group="B10 leaving imap_unordered / map early")
B11 = pytest.mark.benchmark(group="B11 draining a deep queue")
SCALE = pytest.mark.benchmark(group="scale figures")


# -- B1: bulk submit, then wait all ----------------------------------------------------


@B1
def test_b1_tasker(benchmark: Any, sizes: Sizes) -> None:
    """B1 tasker: ``submit`` every no-op task, then wait for every reply (target >= 0.5 x bare pool)."""
    run_throughput(benchmark, "B1", TASKER, sizes)


@B1
def test_b1_bare_actor_pool(benchmark: Any, sizes: Sizes) -> None:
    """B1 reference: 8 greenlets serving ``(fn, AsyncResult)`` from one SimpleQueue, the design's floor."""
    run_throughput(benchmark, "B1", BARE, sizes)


@B1
def test_b1_gevent_pool(benchmark: Any, sizes: Sizes) -> None:
    """B1 baseline: ``gevent.pool.Pool(8).spawn`` per task, then join (tasker's target: >= 3 x this)."""
    run_throughput(benchmark, "B1", POOL, sizes)


@B1
def test_b1_spawn_per_task(benchmark: Any, sizes: Sizes) -> None:
    """B1 baseline: ``gevent.spawn`` per task, unbounded, then join every greenlet."""
    run_throughput(benchmark, "B1", SPAWN, sizes)


@B1
def test_b1_thread_pool(benchmark: Any, sizes: Sizes, threads_child: ThreadPoolProcess) -> None:
    """B1 baseline: ``ThreadPoolExecutor(8).submit`` under monkey patching (in a child process)."""
    run_throughput(benchmark, "B1", THREADS, sizes, threads_child)


# -- B2: 100 clients, blocking submit-and-wait -----------------------------------------


@B2
def test_b2_tasker(benchmark: Any, sizes: Sizes) -> None:
    """B2 tasker: 100 greenlets each looping on blocking ``queue_task`` (target >= 0.5 x bare pool)."""
    run_throughput(benchmark, "B2", TASKER, sizes)


@B2
def test_b2_bare_actor_pool(benchmark: Any, sizes: Sizes) -> None:
    """B2 reference: 100 greenlets each looping on ``submit(fn).get()`` of the bare actor pool."""
    run_throughput(benchmark, "B2", BARE, sizes)


@B2
def test_b2_gevent_pool(benchmark: Any, sizes: Sizes) -> None:
    """B2 baseline: 100 greenlets each looping on ``Pool(8).spawn(fn).get()``."""
    run_throughput(benchmark, "B2", POOL, sizes)


@B2
def test_b2_spawn_per_task(benchmark: Any, sizes: Sizes) -> None:
    """B2 baseline: 100 greenlets each looping on ``gevent.spawn(fn).get()``."""
    run_throughput(benchmark, "B2", SPAWN, sizes)


@B2
def test_b2_thread_pool(benchmark: Any, sizes: Sizes, threads_child: ThreadPoolProcess) -> None:
    """B2 baseline: 100 greenlets each looping on ``ThreadPoolExecutor(8).submit(fn).result()``, patched."""
    run_throughput(benchmark, "B2", THREADS, sizes, threads_child)


# -- B3: one client, blocking round trip -----------------------------------------------


@B3
def test_b3_tasker(benchmark: Any, sizes: Sizes) -> None:
    """B3 tasker: one greenlet looping on blocking ``queue_task`` (target: latency <= 2 x bare pool)."""
    run_throughput(benchmark, "B3", TASKER, sizes)


@B3
def test_b3_bare_actor_pool(benchmark: Any, sizes: Sizes) -> None:
    """B3 reference: one greenlet looping on ``submit(fn).get()`` of the bare actor pool."""
    run_throughput(benchmark, "B3", BARE, sizes)


@B3
def test_b3_gevent_pool(benchmark: Any, sizes: Sizes) -> None:
    """B3 baseline: one greenlet looping on ``Pool(8).spawn(fn).get()``."""
    run_throughput(benchmark, "B3", POOL, sizes)


@B3
def test_b3_spawn_per_task(benchmark: Any, sizes: Sizes) -> None:
    """B3 baseline: one greenlet looping on ``gevent.spawn(fn).get()``."""
    run_throughput(benchmark, "B3", SPAWN, sizes)


@B3
def test_b3_thread_pool(benchmark: Any, sizes: Sizes, threads_child: ThreadPoolProcess) -> None:
    """B3 baseline: one greenlet looping on ``ThreadPoolExecutor(8).submit(fn).result()``, patched."""
    run_throughput(benchmark, "B3", THREADS, sizes, threads_child)


# -- B4: I/O-like tasks on 10k workers -------------------------------------------------


@B4
def test_b4_tasker(benchmark: Any, sizes: Sizes) -> None:
    """B4 tasker: 10k workers, ``gevent.sleep(0.01)`` tasks submitted in bulk (target >= 0.8 x bare pool)."""
    run_throughput(benchmark, "B4", TASKER, sizes)


@B4
def test_b4_bare_actor_pool(benchmark: Any, sizes: Sizes) -> None:
    """B4 reference: 10k bare-pool greenlets parked on one SimpleQueue, the same sleeping tasks."""
    run_throughput(benchmark, "B4", BARE, sizes)


@B4
def test_b4_gevent_pool(benchmark: Any, sizes: Sizes) -> None:
    """B4 baseline: ``Pool(10000).spawn`` per sleeping task, then join."""
    run_throughput(benchmark, "B4", POOL, sizes)


@B4
def test_b4_thread_pool(benchmark: Any, sizes: Sizes, threads_child: ThreadPoolProcess) -> None:
    """B4 baseline: ``ThreadPoolExecutor(10000)`` under monkey patching, the same sleeping tasks."""
    run_throughput(benchmark, "B4", THREADS, sizes, threads_child)


@B4W
@pytest.mark.parametrize("name", [TASKER, BARE, POOL])
def test_b4_warm(benchmark: Any, sizes: Sizes, name: str) -> None:
    """B4 warm: the burst arrives while every worker is busy (target: tasker >= 0.9 x bare pool)."""
    run_throughput(benchmark, "B4w", name, sizes)


# -- B5-B7: tasker's own costs against their bounds ------------------------------------


@B5
def test_b5_scaler(benchmark: Any, sizes: Sizes) -> None:
    """B5 tasker scaler on the real clock (20 ms ticks): idle -> saturation -> idle -> partial load.

    Not a comparison: extra_info holds the ticks to max_worker_count (target <= 3), the
    ticks back to base after the load (target <= linger + 3) and the worker-count changes
    at steady load (target 0). The time is that of the whole scripted load.
    """
    result = benchmark.pedantic(scaler_response, kwargs={"steady_ticks": 5 if sizes.name == "quick" else 15})
    assert result.tasks > 0
    benchmark.extra_info.update(
        ticks_to_max=result.ticks_to_max,
        ticks_to_base=result.ticks_to_base,
        changes_at_saturation=result.changes_at_saturation,
        changes_at_partial=result.changes_at_partial,
    )


@B6
def test_b6_collector_record(benchmark: Any, sizes: Sizes) -> None:
    """B6 ``Collector.record_completion`` (target <= 2 us each); extra_info: bytes grown over the records.

    The growth is that of every object reachable from the collector, between the end of
    a warm-up and the end of the benchmark (target: flat).
    """
    collector = Collector()
    warm_collector(collector)
    before = deep_size(collector)
    benchmark.pedantic(record_loop, args=(collector, sizes.records), rounds=sizes.repeat)
    collector.metrics()  # folds what is still buffered
    benchmark.extra_info.update(records=sizes.records, growth_bytes=deep_size(collector) - before)


@B6
def test_b6_collector_metrics(benchmark: Any, sizes: Sizes) -> None:
    """B6 ``Collector.metrics()`` after the records of a full run (target <= 1 ms)."""
    collector = Collector()
    record_loop(collector, sizes.records)
    metrics = benchmark(collector.metrics)
    assert metrics.total_tasks_completed == sizes.records


@B7
def test_b7_tasker_workers(benchmark: Any, sizes: Sizes) -> None:
    """B7 tasker: RSS of 10k idle workers, in a fresh process; compare with test_b7_parked_greenlets.

    Target: <= 12 KB per worker above a parked greenlet. The time is that of the whole
    child process (start-up included).
    """
    result = benchmark.pedantic(idle_memory, args=("tasker", sizes.idle_workers))
    benchmark.extra_info.update(count=result.count, kb_each=result.per_item / 1024)


@B7
def test_b7_parked_greenlets(benchmark: Any, sizes: Sizes) -> None:
    """B7 baseline: RSS of 10k plain greenlets parked on one Event, in a fresh process."""
    result = benchmark.pedantic(idle_memory, args=("greenlet", sizes.idle_workers))
    benchmark.extra_info.update(count=result.count, kb_each=result.per_item / 1024)


# -- B8: loopback scraping ------------------------------------------------------------


@pytest.fixture(scope="module")
def farm() -> Any:
    """The loopback HTTP server of B8 (asyncio processes answering after 20 ms)."""
    with ServerFarm() as servers:
        yield servers


@B8
@pytest.mark.parametrize("name", [TASKER, POOL, AIOHTTP, THREADS])
def test_b8_scrape(benchmark: Any, sizes: Sizes, farm: ServerFarm, name: str) -> None:
    """B8: fetch URLs at C = 1,000 (the smallest C at quick sizes), each client in its own process.

    Target at C = 1,000: tasker >= 1.1 x gevent Pool and >= 1.2 x asyncio + aiohttp in
    req/s. asyncio + aiohttp is skipped without ``pip install tasker[bench]``.
    """
    if name == AIOHTTP and not aiohttp_available():
        pytest.skip("aiohttp is not installed (pip install tasker[bench])")
    c = sizes.scrape_threads if name == THREADS else min(sizes.scrape_concurrency, key=lambda c: abs(c - 1000))
    run = benchmark.pedantic(scrape, args=(farm, name, sizes.scrape_urls, c), rounds=sizes.repeat)
    assert run.requests == sizes.scrape_urls
    benchmark.extra_info.update(
        concurrency=c,
        req_per_s=run.rate,
        p50_ms=run.p50 * 1e3,
        p99_ms=run.p99 * 1e3,
        client_cpu_us_per_req=run.cpu_per_request * 1e6,
        server_cpu_us_per_req=run.server_per_request * 1e6,
        peak_rss_mb=run.peak_rss / 2**20,
    )


# -- B9-B11: cancelling and draining ---------------------------------------------------


@B9
@pytest.mark.parametrize("depth_index", [0, -1], ids=["shallow", "deep"])
def test_b9_cancel(benchmark: Any, sizes: Sizes, depth_index: int) -> None:
    """B9: cancel() of queued messages at the smallest and largest depth (target: deep <= 2 x shallow)."""
    depth = sizes.cancel_depths[depth_index]
    result = benchmark.pedantic(cancel_cost, args=(depth, sizes.cancels))
    benchmark.extra_info.update(depth=depth, cancels=result.cancels, us_per_cancel=result.per_cancel * 1e6)


@B10
@pytest.mark.parametrize("method", ["imap_unordered", "map"])
def test_b10_break_out(benchmark: Any, sizes: Sizes, method: str) -> None:
    """B10: leave the loop with ``in_flight`` items in flight (target <= 0.5 s at 50k, linear)."""
    result = benchmark.pedantic(break_out_cost, args=(method, sizes.in_flight))
    assert result.queued_left == 0
    benchmark.extra_info.update(in_flight=result.in_flight, close_s=result.seconds, us_per_item=result.per_item * 1e6)


@B11
@pytest.mark.parametrize("name", [TASKER, BARE])
def test_b11_drain(benchmark: Any, sizes: Sizes, name: str) -> None:
    """B11: drain a queue of no-op tasks, in a fresh process (target: tasker <= 3 x the bare pool per task)."""
    result = benchmark.pedantic(drain_queue, args=(name, sizes.drain_tasks))
    benchmark.extra_info.update(
        tasks=result.tasks, us_per_task=result.per_task * 1e6, bytes_per_pending=result.bytes_per_pending
    )


# -- the scale figures -----------------------------------------------------------------


@SCALE
@pytest.mark.parametrize("name", [TASKER, BARE])
def test_scale_task_cost(benchmark: Any, sizes: Sizes, name: str) -> None:
    """Per-task cost at the largest worker count of the scale figures."""
    workers = sizes.scale_workers[-1]
    result = benchmark.pedantic(task_cost, args=(name, workers, sizes.scale_tasks))
    benchmark.extra_info.update(workers=workers, us_per_task=result.per_task * 1e6)


@SCALE
def test_scale_lifecycle(benchmark: Any, sizes: Sizes) -> None:
    """Start-up, stop() and kill() at the largest idle-worker count, in a fresh process."""
    workers = sizes.scale_idle[-1]
    result = benchmark.pedantic(lifecycle, args=(workers,))
    benchmark.extra_info.update(
        workers=workers,
        start_s=result.start,
        stop_s=result.stop,
        kill_s=result.kill,
        kb_per_idle_worker=result.bytes_per_worker / 1024,
    )


def test_scale_chart_is_an_svg() -> None:
    """The chart of ``--plot`` is well-formed SVG with one polyline per series."""
    from xml.dom import minidom

    panel = Panel("t", "x", "y", (Series("a", ((8, 1.0), (1000, 2.0))), Series("b", ((8, 0.5),))))
    document = minidom.parseString(svg([panel, panel], caption="c"))
    assert document.documentElement is not None and document.documentElement.tagName == "svg"
    assert len(document.getElementsByTagName("polyline")) == 4
