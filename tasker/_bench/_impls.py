"""The implementations B1-B4 compare, the tasks they run, and the ThreadPoolExecutor child.

Each implementation is an :class:`Impl`: started with ``W`` workers, driven (``bulk``
or ``clients``), then closed. tasker is one; the plain-gevent baselines (the bare actor
pool, gevent Pool, spawn-per-task) are the others. ThreadPoolExecutor only means
something under ``gevent.monkey.patch_all()``, which changes the whole process, so it
runs in a child process (:class:`ThreadPoolProcess`, whose loop is :func:`_serve`) and
is driven over a pipe (:class:`_Remote`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import IO, Any

import gevent
import gevent.pool
from gevent.event import AsyncResult
from gevent.queue import SimpleQueue

from .._config import Config
from .._context import Context
from .._manager import TaskManager
from ._memory import peak_rss, reset_peak_rss

__all__ = [
    "BARE",
    "IO_SLEEP",
    "POOL",
    "SPAWN",
    "TASKER",
    "THREADS",
    "BareActorPool",
    "Impl",
    "ThreadPoolProcess",
    "client_latencies",
    "make_impl",
    "percentiles",
]

IO_SLEEP = 0.01  # seconds: the "I/O-like" task of B4 and B5
TASKER = "tasker"
BARE = "bare actor pool"
POOL = "gevent Pool"
SPAWN = "spawn-per-task"
THREADS = "ThreadPoolExecutor"


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

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        """Submit ``n`` tasks (no-op, or ``gevent.sleep(IO_SLEEP)`` if ``io``), then wait all.

        With ``wait=False`` it returns once they are submitted (B4 warm: the burst that
        keeps every worker busy); ``close`` waits for them.
        """
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

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        task = _io if io else _noop
        submit = self._manager.submit
        replies = [submit(task) for _ in range(n)]
        if wait:
            for reply in replies:
                reply.get()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        return client_latencies(partial(self._manager.queue_task, _noop), clients, per_client)

    def close(self) -> None:
        self._manager.stop()


class _Bare(Impl):
    name = BARE

    def start(self, workers: int) -> None:
        self._pool = BareActorPool(workers)

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        task = _io0 if io else _noop0
        submit = self._pool.submit
        replies = [submit(task) for _ in range(n)]
        if wait:
            for reply in replies:
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

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        task = _io0 if io else _noop0
        spawn = gevent.spawn
        greenlets = [spawn(task) for _ in range(n)]
        if wait:
            for greenlet in greenlets:
                greenlet.join()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        return client_latencies(partial(_spawn_get, _noop0), clients, per_client)

    def close(self) -> None:
        pass


class _Pool(Impl):
    name = POOL

    def start(self, workers: int) -> None:
        self._pool = gevent.pool.Pool(workers)

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        task = _io0 if io else _noop0
        spawn = self._pool.spawn
        for _ in range(n):
            spawn(task)
        if wait:
            self._pool.join()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        spawn = self._pool.spawn
        return client_latencies(lambda: spawn(_noop0).get(), clients, per_client)

    def close(self) -> None:
        self._pool.join()
        self._pool.kill()


class _Threads(Impl):
    """ThreadPoolExecutor; only meaningful in a monkey-patched process (see ThreadPoolProcess)."""

    name = THREADS

    def start(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(workers)

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        task = _io0 if io else _noop0
        submit = self._executor.submit
        futures = [submit(task) for _ in range(n)]
        if wait:
            for future in futures:
                future.result()

    def clients(self, clients: int, per_client: int) -> tuple[float, float, float]:
        submit = self._executor.submit
        return client_latencies(lambda: submit(_noop0).result(), clients, per_client)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


_CHILD_MAIN = "from gevent import monkey; monkey.patch_all(); from tasker._bench._impls import _serve; _serve()"


def _child_env() -> dict[str, str]:
    """The environment of a child process, able to import this very tasker."""
    env = dict(os.environ)
    # tasker/_bench/_impls.py: three levels up is the directory that holds tasker.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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

    def bulk(self, n: int, io: bool, wait: bool = True) -> None:
        self._child.call("bulk", n, io, wait)

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
