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
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import IO, Any

import attrs
import gevent
import gevent.pool
from gevent.event import AsyncResult, Event
from gevent.queue import SimpleQueue

from ._config import Config
from ._context import Context
from ._manager import TaskManager
from ._metrics import Collector
from ._types import TaskLifecycleTimestamps

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
    "Impl",
    "Run",
    "Sizes",
    "ThreadPoolProcess",
    "collector_costs",
    "deep_size",
    "idle_memory",
    "main",
    "make_impl",
    "measure",
    "record_loop",
    "scaler_response",
    "task_count",
    "warm_collector",
    "warm_up",
    "workload",
]

IO_SLEEP = 0.01  # seconds: the "I/O-like" task of B4 and B5
TASKER = "tasker"
BARE = "bare actor pool"
POOL = "gevent Pool"
SPAWN = "spawn-per-task"
THREADS = "ThreadPoolExecutor"
REFERENCE = BARE  # the baseline B1-B4 ratios are taken against
THROUGHPUT_IMPLS = {
    "B1": (TASKER, BARE, POOL, SPAWN, THREADS),
    "B2": (TASKER, BARE, POOL, SPAWN, THREADS),
    "B3": (TASKER, BARE, POOL, SPAWN, THREADS),
    # spawn-per-task has no concurrency bound: 200k tasks would sleep at once.
    "B4": (TASKER, BARE, POOL, THREADS),
}
# The implementations a target compares: only their runs are repeated (best kept).
REPEATED = {
    "B1": (TASKER, BARE, POOL),
    "B2": (TASKER, BARE),
    "B3": (TASKER, BARE),
    "B4": (),  # 10k workers: one run each is long enough to be stable
}
TITLES = {
    "B1": "no-op tasks submitted in bulk, then wait all",
    "B2": "client greenlets, each a blocking submit-and-wait loop",
    "B3": "one client, blocking round trip of a no-op task",
    "B4": "gevent.sleep(0.01) tasks on many workers",
    "B5": "scaler: idle -> saturation -> idle",
    "B6": "collector: record samples, read metrics()",
    "B7": "memory of idle workers",
}


@attrs.frozen
class Sizes:
    """How big each scenario is; :data:`FULL` is BENCH.md, :data:`DEFAULT` fits in a minute."""

    name: str
    bulk_tasks: int  # B1
    client_tasks: int  # B2, over all clients
    round_trips: int  # B3
    io_workers: int  # B4
    io_tasks: int  # B4
    records: int  # B6
    idle_workers: int  # B7
    repeat: int  # runs of B1-B3 of the implementations a target compares; the best is kept
    workers: int = 8  # B1-B3
    clients: int = 100  # B2


FULL = Sizes("full", 200_000, 200_000, 100_000, 10_000, 200_000, 1_000_000, 10_000, repeat=3)
DEFAULT = Sizes("default", 40_000, 30_000, 10_000, 10_000, 30_000, 1_000_000, 10_000, repeat=3)
QUICK = Sizes("quick", 2_000, 2_000, 500, 500, 1_000, 20_000, 500, repeat=1)
SIZES = {s.name: s for s in (QUICK, DEFAULT, FULL)}


# -- memory ------------------------------------------------------------------------------


def _psutil() -> Any:
    try:
        return importlib.import_module("psutil")
    except ImportError:  # psutil is a test extra, not a dependency of tasker
        return None


def current_rss() -> int:
    """Resident set size of this process now, in bytes (psutil, else /proc)."""
    psutil = _psutil()
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def reset_peak_rss() -> None:
    """Collect garbage and restart the peak-RSS high-water mark (Linux; a no-op elsewhere)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak resident set size since :func:`reset_peak_rss`, in bytes (else since start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


# -- tasks -------------------------------------------------------------------------------


def _noop(ctx: Context, resource: object) -> None:
    """The tasker no-op task: measures dispatch alone."""


def _io(ctx: Context, resource: object) -> None:
    """The tasker I/O-like task."""
    gevent.sleep(IO_SLEEP)


def _noop0() -> None:
    """The baselines' no-op task."""


def _io0() -> None:
    """The baselines' I/O-like task."""
    gevent.sleep(IO_SLEEP)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 (nearest rank) of ``samples``; sorts it in place."""
    samples.sort()
    n = len(samples)
    return tuple(samples[min(n - 1, max(0, math.ceil(q * n) - 1))] for q in (0.50, 0.95, 0.99))  # type: ignore[return-value]


def client_latencies(call: Callable[[], object], clients: int, per_client: int) -> tuple[float, float, float]:
    """``clients`` greenlets each make ``per_client`` blocking ``call()``; p50/p95/p99 seconds."""
    latencies: list[float] = []

    def client() -> None:
        clock = time.perf_counter
        append = latencies.append
        for _ in range(per_client):
            start = clock()
            call()
            append(clock() - start)

    if clients == 1:
        client()
    else:
        gevent.joinall([gevent.spawn(client) for _ in range(clients)], raise_error=True)
    return percentiles(latencies)


# -- implementations ---------------------------------------------------------------------


class BareActorPool:
    """The design's floor: ``workers`` greenlets serving ``(fn, AsyncResult)`` from one queue."""

    def __init__(self, workers: int) -> None:
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._workers = [gevent.spawn(self._work) for _ in range(workers)]

    def _work(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            fn, result = item
            try:
                result.set(fn())
            except Exception as exc:
                result.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> AsyncResult:
        """Queue ``fn``; its reply."""
        result = AsyncResult()
        self._queue.put((fn, result))
        return result

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a worker and wait for its value."""
        return self.submit(fn).get()

    def close(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        gevent.joinall(self._workers)


class Impl:
    """One implementation under test: started with ``workers``, then driven, then closed."""

    name = ""

    def start(self, workers: int) -> None:
        raise NotImplementedError

    def bulk(self, n: int, io: bool) -> None:
        """Submit ``n`` tasks (no-op, or ``gevent.sleep(IO_SLEEP)`` if ``io``), then wait all."""
        raise NotImplementedError

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        """Blocking round trips of no-op tasks from ``clients`` greenlets: p50/p95/p99 s."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reset_peak(self) -> None:
        reset_peak_rss()

    def peak_rss(self) -> int:
        return peak_rss()


class _Tasker(Impl):
    name = TASKER

    def start(self, workers: int) -> None:
        config: Config[object] = Config(
            on_create=object, worker_count=workers, max_worker_count=workers, resource_pool_size=0
        )
        self._manager: TaskManager[object, None] = TaskManager(config)

    def bulk(self, n: int, io: bool) -> None:
        task = _io if io else _noop
        submit = self._manager.submit
        for reply in [submit(task) for _ in range(n)]:
            reply.get()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        return client_latencies(partial(self._manager.queue_task, _noop), clients, per_client)

    def close(self) -> None:
        self._manager.stop()


class _Bare(Impl):
    name = BARE

    def start(self, workers: int) -> None:
        self._pool = BareActorPool(workers)

    def bulk(self, n: int, io: bool) -> None:
        task = _io0 if io else _noop0
        submit = self._pool.submit
        for reply in [submit(task) for _ in range(n)]:
            reply.get()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        return client_latencies(partial(self._pool.call, _noop0), clients, per_client)

    def close(self) -> None:
        self._pool.close()


def _spawn_get(fn: Callable[[], Any]) -> Any:
    return gevent.spawn(fn).get()


class _Spawn(Impl):
    name = SPAWN

    def start(self, workers: int) -> None:
        pass

    def bulk(self, n: int, io: bool) -> None:
        task = _io0 if io else _noop0
        spawn = gevent.spawn
        for greenlet in [spawn(task) for _ in range(n)]:
            greenlet.join()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        return client_latencies(partial(_spawn_get, _noop0), clients, per_client)

    def close(self) -> None:
        pass


class _Pool(Impl):
    name = POOL

    def start(self, workers: int) -> None:
        self._pool = gevent.pool.Pool(workers)

    def bulk(self, n: int, io: bool) -> None:
        task = _io0 if io else _noop0
        spawn = self._pool.spawn
        for _ in range(n):
            spawn(task)
        self._pool.join()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        spawn = self._pool.spawn
        return client_latencies(lambda: spawn(_noop0).get(), clients, per_client)

    def close(self) -> None:
        self._pool.kill()


class _Threads(Impl):
    """ThreadPoolExecutor; only meaningful in a monkey-patched process (see ThreadPoolProcess)."""

    name = THREADS

    def start(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(workers)

    def bulk(self, n: int, io: bool) -> None:
        task = _io0 if io else _noop0
        submit = self._executor.submit
        for future in [submit(task) for _ in range(n)]:
            future.result()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        submit = self._executor.submit
        return client_latencies(lambda: submit(_noop0).result(), clients, per_client)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


_CHILD_MAIN = "from gevent import monkey; monkey.patch_all(); import tasker._bench as b; b._serve()"


def _child_env() -> dict[str, str]:
    """The environment of a child process, able to import this very tasker."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class ThreadPoolProcess:
    """A monkey-patched child process running :class:`_Threads`, driven over a pipe.

    ``gevent.monkey.patch_all()`` changes the whole process, so the ThreadPoolExecutor
    baseline never runs next to the others. One line of JSON per call each way.
    """

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )

    def call(self, method: str, *args: Any) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps([method, *args]) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the ThreadPoolExecutor child died (exit code {self._process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the ThreadPoolExecutor child raised: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        process = self._process
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> ThreadPoolProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serve(stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
    """The child's loop: run each ``[method, *args]`` line on a :class:`_Threads`."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    impl = _Threads()
    for line in iter(stdin.readline, ""):
        method, *args = json.loads(line)
        try:
            reply: dict[str, Any] = {"ok": getattr(impl, method)(*args)}
        except Exception as exc:
            reply = {"error": repr(exc)}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


class _Remote(Impl):
    """The :class:`_Threads` implementation in a :class:`ThreadPoolProcess`."""

    name = THREADS

    def __init__(self, child: ThreadPoolProcess) -> None:
        self._child = child

    def start(self, workers: int) -> None:
        self._child.call("start", workers)

    def bulk(self, n: int, io: bool) -> None:
        self._child.call("bulk", n, io)

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        p50, p95, p99 = self._child.call("clients", clients, per_client)
        return p50, p95, p99

    def close(self) -> None:
        self._child.call("close")

    def reset_peak(self) -> None:
        self._child.call("reset_peak")

    def peak_rss(self) -> int:
        return int(self._child.call("peak_rss"))


def make_impl(name: str, child: ThreadPoolProcess | None = None) -> Impl:
    """The implementation called ``name``; ThreadPoolExecutor needs a child process."""
    if name == THREADS:
        if child is None:
            raise ValueError("the ThreadPoolExecutor baseline runs in a ThreadPoolProcess")
        return _Remote(child)
    kinds: dict[str, type[Impl]] = {TASKER: _Tasker, BARE: _Bare, POOL: _Pool, SPAWN: _Spawn}
    return kinds[name]()


# -- B1-B4: throughput and latency -------------------------------------------------------


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
    if scenario == "B4":
        return sizes.io_workers, lambda impl: impl.bulk(sizes.io_tasks, True)
    raise ValueError(f"not a throughput scenario: {scenario!r}")


def task_count(scenario: str, sizes: Sizes) -> int:
    """How many tasks one run of scenario B1-B4 completes."""
    return {
        "B1": sizes.bulk_tasks,
        "B2": max(1, sizes.client_tasks // sizes.clients) * sizes.clients,
        "B3": sizes.round_trips,
        "B4": sizes.io_tasks,
    }[scenario]


def warm_up(scenario: str, impl: Impl, sizes: Sizes) -> None:
    """Run tasks on a started ``impl`` so that the timed run starts hot, every worker parked.

    B4 runs one sleeping task per worker first: a pool's workers are parked when a burst
    comes, and waking thousands of greenlets parked on one queue is what B4 is about
    (without it, a fresh bare pool would find its queue full and never park).
    """
    if scenario == "B4":
        impl.bulk(sizes.io_workers, True)
    else:
        impl.bulk(min(1000, sizes.bulk_tasks), False)


def measure(scenario: str, impl: Impl, sizes: Sizes) -> Run:
    """Start ``impl``, warm it up, time one run of ``scenario`` (B1-B4), close it."""
    workers, body = workload(scenario, sizes)
    impl.start(workers)
    try:
        warm_up(scenario, impl, sizes)
        impl.reset_peak()
        start = time.perf_counter()
        latency = body(impl)
        seconds = time.perf_counter() - start
        peak = impl.peak_rss()
    finally:
        impl.close()
    return Run(task_count(scenario, sizes), seconds, latency, peak)


# -- B5: scaler --------------------------------------------------------------------------


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


# -- B6: collector -----------------------------------------------------------------------


@attrs.frozen
class CollectorResult:
    """B6: the default collector's cost per record and per read, and its memory growth."""

    records: int
    record_us: float  # microseconds per record_completion
    metrics_ms: float  # milliseconds per metrics()
    size_before: int  # bytes reachable from the collector after the warm-up records
    size_after: int  # ... after ``records`` more
    peak_rss: int

    @property
    def growth(self) -> int:
        return self.size_after - self.size_before


def deep_size(obj: object) -> int:
    """Bytes of ``obj`` and every object it reaches, except types, modules and functions."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    skip = (type, type(sys), type(deep_size), type(len))
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skip):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
    return total


def _stamps(count: int = 256) -> list[TaskLifecycleTimestamps]:
    """``count`` execution times spread log-uniformly from 1 µs to 1 s, in many buckets."""
    return [TaskLifecycleTimestamps(0.0, 0.001, 0.001 + 10 ** (-6 + 6 * i / count)) for i in range(count)]


def warm_collector(collector: Collector) -> None:
    """Record every sample 300 times.

    That takes every bucket count past CPython's cache of small ints (objects shared
    by the whole process), so that a size measured next grows only if the collector's
    memory grows with the number of samples.
    """
    record = collector.record_completion
    for stamp in _stamps() * 300:
        record(stamp)


def collector_costs(records: int, reads: int = 200) -> CollectorResult:
    """B6: ``records`` calls of ``record_completion``, then ``reads`` calls of ``metrics()``."""
    reset_peak_rss()
    collector = Collector()
    stamps = _stamps()
    record = collector.record_completion
    warm_collector(collector)
    before = deep_size(collector)
    mask = len(stamps) - 1
    start = time.perf_counter()
    for i in range(records):
        record(stamps[i & mask])
    record_s = (time.perf_counter() - start) / records
    after = deep_size(collector)
    start = time.perf_counter()
    for _ in range(reads):
        collector.metrics()
    metrics_s = (time.perf_counter() - start) / reads
    return CollectorResult(records, record_s * 1e6, metrics_s * 1e3, before, after, peak_rss())


def record_loop(collector: Collector, records: int) -> None:
    """The timed part of B6's record cost, for pytest-benchmark."""
    stamps = _stamps()
    mask = len(stamps) - 1
    record = collector.record_completion
    for i in range(records):
        record(stamps[i & mask])


# -- B7: memory of idle workers ----------------------------------------------------------


@attrs.frozen
class MemoryResult:
    """B7: RSS added by ``count`` parked tasker workers or plain greenlets."""

    kind: str  # "tasker" | "greenlet"
    count: int
    added: int  # bytes
    peak_rss: int

    @property
    def per_item(self) -> float:
        return self.added / self.count


def _park(kind: str, count: int) -> dict[str, int]:
    """In a fresh process: RSS added by ``count`` idle workers (or parked greenlets)."""
    gc.collect()
    before = current_rss()
    if kind == "tasker":
        config: Config[object] = Config(
            on_create=object, worker_count=count, max_worker_count=count, resource_pool_size=0
        )
        manager: TaskManager[object, None] = TaskManager(config)
        gevent.idle()
        parked = len(manager._mailbox.idle)
    else:
        event = Event()
        greenlets = [gevent.spawn(event.wait) for _ in range(count)]
        gevent.idle()
        parked = sum(1 for g in greenlets if g and not g.dead)
    gc.collect()
    added = current_rss() - before
    if parked != count:
        raise RuntimeError(f"only {parked} of {count} {kind} parked")
    peak = peak_rss()
    if kind == "tasker":
        manager.stop()
    else:
        event.set()
        gevent.joinall(greenlets)
    return {"added": added, "peak": peak}


def idle_memory(kind: str, count: int) -> MemoryResult:
    """B7 for ``kind`` ("tasker" or "greenlet"), measured in a child process for isolation."""
    if kind not in ("tasker", "greenlet"):
        raise ValueError(f"kind must be 'tasker' or 'greenlet', got {kind!r}")
    code = f"import json, tasker._bench as b; print(json.dumps(b._park({kind!r}, {count:d})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_child_env(), timeout=120
    ).stdout
    reply = json.loads(out.strip().splitlines()[-1])
    return MemoryResult(kind, count, int(reply["added"]), int(reply["peak"]))


# -- the command line --------------------------------------------------------------------


@attrs.frozen
class Row:
    """One line of the table."""

    scenario: str
    impl: str
    rate: float | None = None  # tasks/s
    ratio: float | None = None  # rate / the reference's rate
    latency: tuple[float, float, float] | None = None  # seconds
    peak_rss: int | None = None  # bytes
    note: str = ""


@attrs.frozen
class Target:
    """One BENCH.md target and whether this run met it."""

    scenario: str
    text: str
    measured: str
    met: bool


def _best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.rate)


def _throughput(
    scenario: str, sizes: Sizes, child: ThreadPoolProcess, repeat: int, log: Callable[[str], None]
) -> dict[str, Run]:
    """Every implementation of ``scenario``, interleaved ``repeat`` times; the best run of each."""
    names = THROUGHPUT_IMPLS[scenario]
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in names:
            if round_ == 0 or name in REPEATED[scenario]:
                log(f"{scenario} {name}")
                run = measure(scenario, make_impl(name, child), sizes)
                log(f"  {run.rate:,.0f} tasks/s")
                runs[name].append(run)
    return {name: _best(r) for name, r in runs.items()}


def _throughput_rows(scenario: str, best: dict[str, Run]) -> list[Row]:
    reference = best[REFERENCE].rate
    return [
        Row(scenario, name, run.rate, run.rate / reference, run.latency, run.peak_rss) for name, run in best.items()
    ]


def _targets(
    best: dict[str, dict[str, Run]],
    scaler: ScalerResult | None,
    collector: CollectorResult | None,
    memory: dict[str, MemoryResult] | None,
) -> list[Target]:
    targets = []

    def ratio(scenario: str, other: str, need: float) -> None:
        if scenario in best:
            got = best[scenario][TASKER].rate / best[scenario][other].rate
            text = f"tasker >= {need:g} x {other} (tasks/s)"
            targets.append(Target(scenario, text, f"{got:.2f} x", got >= need))

    ratio("B1", BARE, 0.5)
    ratio("B1", POOL, 3.0)
    ratio("B2", BARE, 0.5)
    if "B3" in best:
        mine, floor = best["B3"][TASKER].latency, best["B3"][BARE].latency
        assert mine is not None and floor is not None
        got = mine[0] / floor[0]
        targets.append(Target("B3", f"tasker p50 latency <= 2 x {BARE}", f"{got:.2f} x", got <= 2.0))
    ratio("B4", BARE, 0.8)
    if scaler is not None:
        up, down = scaler.ticks_to_max, scaler.ticks_to_base
        limit = scaler.linger_ticks + 3
        targets.append(
            Target("B5", "max_worker_count within 3 intervals of the step", _ticks(up), up is not None and up <= 3)
        )
        targets.append(
            Target(
                "B5",
                f"back to base within linger + 3 = {limit:g} intervals",
                _ticks(down),
                down is not None and down <= limit,
            )
        )
        changes = scaler.changes_at_saturation + scaler.changes_at_partial
        targets.append(
            Target(
                "B5",
                "no oscillation at steady load (worker-count changes)",
                f"{scaler.changes_at_saturation} + {scaler.changes_at_partial}",
                scaler.changes_at_saturation >= 0 and changes == 0,
            )
        )
    if collector is not None:
        targets.append(
            Target(
                "B6",
                f"memory flat over {collector.records:,} records",
                f"{collector.growth:+,d} B",
                collector.growth <= 1024,
            )
        )
        targets.append(Target("B6", "record <= 2 us", f"{collector.record_us:.2f} us", collector.record_us <= 2.0))
        targets.append(Target("B6", "metrics() <= 1 ms", f"{collector.metrics_ms:.3f} ms", collector.metrics_ms <= 1.0))
    if memory is not None:
        extra = (memory["tasker"].per_item - memory["greenlet"].per_item) / 1024
        targets.append(Target("B7", "idle worker <= 12 KB above a parked greenlet", f"{extra:+.1f} KB", extra <= 12.0))
    return targets


def _ticks(ticks: float | None) -> str:
    return "never" if ticks is None else f"{ticks:.1f} ticks"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:,.1f}"


def format_table(rows: Sequence[Row], targets: Sequence[Target]) -> str:
    """The table of rows, then the targets with PASS/MISS."""
    header = ("scenario", "implementation", "tasks/s", f"vs {REFERENCE}", "p50 us", "p95 us", "p99 us", "peak RSS MB")
    cells = [header]
    for row in rows:
        lat = row.latency
        cells.append(
            (
                row.scenario,
                row.impl,
                _rate(row.rate),
                "-" if row.ratio is None else f"{row.ratio:.2f}",
                "-" if lat is None else _us(lat[0]),
                "-" if lat is None else _us(lat[1]),
                "-" if lat is None else _us(lat[2]),
                _mb(row.peak_rss),
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    notes = ["", *(row.note for row in rows)]
    lines = []
    for n, (line, note) in enumerate(zip(cells, notes, strict=True)):
        text = "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        lines.append(f"{text}  {note}".rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("targets (BENCH.md):")
    for target in targets:
        verdict = "PASS" if target.met else "MISS"
        lines.append(f"  {verdict}  {target.scenario}  {target.text}: {target.measured}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasker bench",
        description=(
            "Benchmarks B1-B7 of BENCH.md: tasker side by side with plain-gevent baselines "
            "(spawn-per-task, gevent Pool, a bare actor pool, ThreadPoolExecutor under monkey "
            "patching). Targets are ratios measured in the same run, so they hold on a noisy machine."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="BENCH.md sizes (200k tasks...; several minutes)")
    size.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument(
        "--repeat", type=int, help="runs of B1-B3 for the implementations a target compares, best kept (default 3)"
    )
    parser.add_argument("--only", metavar="B1,B3", help="comma-separated scenarios to run (default: all of B1-B7)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what runs, on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the table; the exit status of ``python -m tasker bench``."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    sizes = FULL if args.full else QUICK if args.quick else DEFAULT
    repeat = args.repeat if args.repeat is not None else sizes.repeat
    if repeat < 1:
        parser.print_usage(sys.stderr)
        print("--repeat must be >= 1", file=sys.stderr)
        return 2
    scenarios = [f"B{i}" for i in range(1, 8)]
    if args.only:
        wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in scenarios]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s in wanted]

    def log(msg: str) -> None:
        if args.verbose:
            print(f"  running {msg}", file=sys.stderr, flush=True)

    print(
        f"tasker bench, {sizes.name} sizes, best of {repeat} runs: Python {platform.python_version()}, "
        f"gevent {gevent.__version__}, {os.cpu_count()} CPUs, {platform.machine()}",
        flush=True,
    )
    started = time.perf_counter()
    rows: list[Row] = []
    best: dict[str, dict[str, Run]] = {}
    scaler = collector = None
    memory: dict[str, MemoryResult] | None = None
    throughput = [s for s in scenarios if s in THROUGHPUT_IMPLS]
    if throughput:
        with ThreadPoolProcess() as child:
            for scenario in throughput:
                best[scenario] = _throughput(scenario, sizes, child, repeat, log)
                rows += _throughput_rows(scenario, best[scenario])
    if "B5" in scenarios:
        log("B5 scaler")
        scaler = scaler_response(steady_ticks=5 if sizes is QUICK else 15)
        rows.append(
            Row(
                "B5",
                "tasker scaler",
                note=(
                    f"interval {scaler.interval * 1e3:g} ms: max in {_ticks(scaler.ticks_to_max)}, "
                    f"base in {_ticks(scaler.ticks_to_base)} after the load, "
                    f"{scaler.changes_at_saturation}/{scaler.changes_at_partial} changes at steady full/partial load"
                ),
            )
        )
    if "B6" in scenarios:
        log("B6 collector")
        collector = collector_costs(sizes.records)
        rows.append(
            Row(
                "B6",
                "tasker Collector",
                peak_rss=collector.peak_rss,
                note=(
                    f"record {collector.record_us:.2f} us, metrics() {collector.metrics_ms:.3f} ms, "
                    f"{collector.growth:+,d} B over {collector.records:,} records"
                ),
            )
        )
    if "B7" in scenarios:
        log("B7 memory")
        memory = {kind: idle_memory(kind, sizes.idle_workers) for kind in ("greenlet", "tasker")}
        for kind, label in (("tasker", "tasker workers"), ("greenlet", "parked greenlets")):
            result = memory[kind]
            rows.append(
                Row(
                    "B7",
                    label,
                    peak_rss=result.peak_rss,
                    note=f"{result.per_item / 1024:.1f} KB each over {result.count:,}",
                )
            )
    print()
    for scenario in scenarios:
        print(f"  {scenario}: {TITLES[scenario]}")
    print()
    targets = _targets(best, scaler, collector, memory)
    print(format_table(rows, targets))
    print(f"\n({time.perf_counter() - started:.1f} s; ratios are tasks/s over the {REFERENCE}'s, in this run)")
    if args.check and not all(t.met for t in targets):
        return 1
    return 0
