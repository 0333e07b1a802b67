"""B8: loopback scraping, the workload users compare, tasker against what they would use.

A local HTTP server (:class:`ServerFarm`: ``processes`` asyncio processes accepting on one
listening socket on 127.0.0.1) answers every request 20 ms after it arrives, on
keep-alive connections. Its CPU is read from ``/proc`` around every run and printed, so
that a reader can see it is not the bottleneck.

Each client runs in a fresh child process (:func:`_client`), so that its CPU time and
peak RSS are its own, and fetches ``n`` URLs at concurrency ``c``:

- **tasker**: ``worker_count = c``, each worker owning a keep-alive
  ``http.client.HTTPConnection`` (its resource), every URL submitted at once, under
  ``gevent.monkey.patch_all()``;
- **gevent Pool**: ``gevent.pool.Pool(c).spawn`` per URL, with the same client: ``c``
  keep-alive connections on a free list, one taken per request;
- **asyncio + aiohttp**: ``Semaphore(c)`` and ``TCPConnector(limit=c)``, every URL
  gathered at once (skipped when aiohttp is not installed: ``pip install tasker[bench]``);
- **ThreadPoolExecutor**: ``c`` OS threads (no patching), each with its own connection.

Printed per run: requests/s, p50/p99 of each request (from sending it to reading the
whole answer), client CPU µs per request, client peak RSS, server CPU µs per request.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._impls import _child_env, percentiles
from ._memory import peak_rss
from ._sizes import Sizes

__all__ = [
    "AIOHTTP",
    "CLIENTS",
    "POOL",
    "TASKER",
    "THREADS",
    "ScrapeRun",
    "ServerFarm",
    "aiohttp_available",
    "clients_for",
    "raise_fd_limit",
    "scrape",
    "scrape_all",
]

TASKER = "tasker"
POOL = "gevent Pool"
AIOHTTP = "asyncio + aiohttp"
THREADS = "ThreadPoolExecutor"
CLIENTS = (TASKER, POOL, AIOHTTP, THREADS)
DELAY = 0.02  # seconds the server waits before it answers
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
_PATCHED = {TASKER, POOL}  # clients that run under gevent.monkey.patch_all()


def aiohttp_available() -> bool:
    """Whether the asyncio + aiohttp client can run (``pip install tasker[bench]``)."""
    return importlib.util.find_spec("aiohttp") is not None


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the server --------------------------------------------------------------------------


class _Answer:
    """asyncio protocol of one keep-alive connection: each request (a GET, no body) is
    answered DELAY seconds after it arrived. A bare protocol, no framework: the server
    must cost far less CPU per request than any client."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: Any = None
        self._later: Any = None

    def connection_made(self, transport: Any) -> None:
        import asyncio

        self._transport = transport
        self._later = asyncio.get_running_loop().call_later

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        requests = buffer.count(b"\r\n\r\n")
        if requests:
            buffer = buffer[buffer.rindex(b"\r\n\r\n") + 4 :]
            for _ in range(requests):
                self._later(DELAY, self._reply)
        self._buffer = buffer

    def _reply(self) -> None:
        if not self._transport.is_closing():
            self._transport.write(RESPONSE)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None if exc is None else self._transport

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _serve(fd: int) -> None:
    """A server process: accept on the inherited listening socket ``fd`` until killed."""
    import asyncio

    raise_fd_limit()
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, sock=listener, backlog=65535)  # type: ignore[arg-type]
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far, from /proc; 0.0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerFarm:
    """``processes`` server processes sharing one listening socket on 127.0.0.1."""

    def __init__(self, processes: int = 2) -> None:
        raise_fd_limit()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(65535)
        self.port: int = self._listener.getsockname()[1]
        fd = self._listener.fileno()
        code = f"from tasker._bench._scrape import _serve; _serve({fd})"
        self._processes = [
            subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdout=subprocess.PIPE, env=_child_env())
            for _ in range(processes)
        ]
        for process in self._processes:  # started up: its CPU from now on is serving
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"ready":
                self.close()
                raise RuntimeError("a B8 server process did not start")

    def cpu(self) -> float:
        """CPU seconds the server processes have used so far."""
        return sum(_cpu_of(p.pid) for p in self._processes)

    def close(self) -> None:
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._listener.close()

    def __enter__(self) -> ServerFarm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the clients (each in its own child process) ------------------------------------------


def _connection(port: int) -> Any:
    """A keep-alive ``http.client.HTTPConnection`` to 127.0.0.1 that connects without a
    name lookup: under monkey patching every ``getaddrinfo``, even of a numeric address,
    goes through gevent's thread pool, and a thousand connections opening at once would
    measure that pool (about 1 s) rather than the clients."""
    import http.client

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            self.sock = sock

    return Connection("127.0.0.1", port, timeout=60)


def _fetch(conn: Any, path: str) -> None:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")


def _run_tasker(port: int, paths: list[str], c: int, latencies: list[float]) -> None:
    from .._config import Config
    from .._manager import TaskManager

    clock = time.perf_counter
    record = latencies.append

    def fetch(path: str) -> Callable[[Any, Any], None]:
        def task(ctx: Any, conn: Any) -> None:
            start = clock()
            _fetch(conn, path)
            record(clock() - start)

        return task

    config: Config[Any] = Config(
        on_create=lambda: _connection(port),
        on_destroy=lambda conn: conn.close(),
        worker_count=c,
        max_worker_count=c,
        resource_pool_size=0,
    )
    manager: TaskManager[Any, None] = TaskManager(config)
    with manager:
        replies = [manager.submit(fetch(path)) for path in paths]
        for reply in replies:
            reply.get()


def _run_pool(port: int, paths: list[str], c: int, latencies: list[float]) -> None:
    import gevent.pool

    clock = time.perf_counter
    record = latencies.append
    free = [_connection(port) for _ in range(c)]  # at most c requests run at once

    def fetch(path: str) -> None:
        conn = free.pop()
        try:
            start = clock()
            _fetch(conn, path)
            record(clock() - start)
        finally:
            free.append(conn)

    pool = gevent.pool.Pool(c)
    spawn = pool.spawn
    greenlets = [spawn(fetch, path) for path in paths]
    pool.join()
    for greenlet in greenlets:
        greenlet.get()
    for conn in free:
        conn.close()


def _run_threads(port: int, paths: list[str], c: int, latencies: list[float]) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    clock = time.perf_counter
    record = latencies.append  # list.append is atomic under the GIL
    local = threading.local()
    opened: list[Any] = []

    def fetch(path: str) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = _connection(port)
            opened.append(conn)
        start = clock()
        _fetch(conn, path)
        record(clock() - start)

    with ThreadPoolExecutor(c) as executor:
        for _ in executor.map(fetch, paths):
            pass
    for conn in opened:
        conn.close()


def _run_aiohttp(port: int, paths: list[str], c: int, latencies: list[float]) -> None:
    import asyncio

    import aiohttp

    clock = time.perf_counter
    record = latencies.append

    async def main() -> None:
        semaphore = asyncio.Semaphore(c)
        connector = aiohttp.TCPConnector(limit=c)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def fetch(url: str) -> None:
                async with semaphore:
                    start = clock()
                    async with session.get(url) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"HTTP {response.status}")
                    record(clock() - start)

            await asyncio.gather(*(fetch(f"http://127.0.0.1:{port}{path}") for path in paths))

    asyncio.run(main())


_RUNNERS: dict[str, Callable[[int, list[str], int, list[float]], None]] = {
    TASKER: _run_tasker,
    POOL: _run_pool,
    THREADS: _run_threads,
    AIOHTTP: _run_aiohttp,
}


def _client(impl: str, port: int, n: int, c: int) -> dict[str, Any]:
    """In a fresh child process: fetch ``n`` URLs at concurrency ``c`` with ``impl``."""
    raise_fd_limit()
    paths = [f"/page/{i}" for i in range(n)]
    latencies: list[float] = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    _RUNNERS[impl](port, paths, c, latencies)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    if len(latencies) != n:
        raise RuntimeError(f"{impl}: {len(latencies)} of {n} requests answered")
    p50, p95, p99 = percentiles(latencies)
    return {"seconds": seconds, "cpu": cpu, "p50": p50, "p95": p95, "p99": p99, "peak": peak_rss()}


@attrs.frozen
class ScrapeRun:
    """One B8 run: ``impl`` fetched ``requests`` URLs at concurrency ``concurrency``."""

    impl: str
    concurrency: int
    requests: int
    seconds: float
    client_cpu: float  # seconds of CPU of the client process
    server_cpu: float  # seconds of CPU of the server processes over the run
    p50: float  # seconds, from sending a request to reading its whole answer
    p95: float
    p99: float
    peak_rss: int  # bytes, of the client process

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_per_request(self) -> float:
        """Client CPU seconds per request."""
        return self.client_cpu / self.requests

    @property
    def server_per_request(self) -> float:
        return self.server_cpu / self.requests

    @property
    def server_load(self) -> float:
        """Server CPU over the run's wall time: 1.0 is one core busy all along."""
        return self.server_cpu / self.seconds if self.seconds > 0 else 0.0


def scrape(farm: ServerFarm, impl: str, n: int, c: int) -> ScrapeRun:
    """One B8 run of ``impl`` against ``farm``, in a child process."""
    if impl not in _RUNNERS:
        raise ValueError(f"unknown B8 client {impl!r}; one of {', '.join(CLIENTS)}")
    prefix = "from gevent import monkey; monkey.patch_all(); " if impl in _PATCHED else ""
    code = (
        f"{prefix}import json; from tasker._bench._scrape import _client; "
        f"print(json.dumps(_client({impl!r}, {farm.port:d}, {n:d}, {c:d})))"
    )
    server_before = farm.cpu()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(), timeout=600)
    server_cpu = farm.cpu() - server_before
    if done.returncode != 0:
        raise RuntimeError(f"B8 {impl} at C = {c} failed:\n{done.stderr[-2000:]}")
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    return ScrapeRun(
        impl,
        c,
        n,
        float(reply["seconds"]),
        float(reply["cpu"]),
        server_cpu,
        float(reply["p50"]),
        float(reply["p95"]),
        float(reply["p99"]),
        int(reply["peak"]),
    )


def clients_for(concurrency: int, threads: int, names: Sequence[str] = CLIENTS) -> list[str]:
    """The clients B8 runs at ``concurrency``: threads only at their own C."""
    return [name for name in names if name != THREADS or concurrency == threads]


def scrape_all(
    sizes: Sizes, repeat: int, log: Callable[[str], None] = lambda msg: None
) -> tuple[dict[int, dict[str, ScrapeRun]], tuple[str, ...]]:
    """B8 at every concurrency of ``sizes``: the best of ``repeat`` interleaved runs of
    each client a target compares (one run of the threads); and the clients skipped."""
    skipped = () if aiohttp_available() else (AIOHTTP,)
    names = [name for name in CLIENTS if name not in skipped]
    best: dict[int, dict[str, ScrapeRun]] = {}
    with ServerFarm() as farm:
        for c in sizes.scrape_concurrency:
            runs: dict[str, ScrapeRun] = {}
            for round_ in range(repeat):
                for name in clients_for(c, sizes.scrape_threads, names):
                    if round_ and name == THREADS:
                        continue
                    log(f"B8 {name} at C = {c:,}")
                    run = scrape(farm, name, sizes.scrape_urls, c)
                    log(f"  {run.rate:,.0f} req/s")
                    if name not in runs or run.rate > runs[name].rate:
                        runs[name] = run
            best[c] = runs
    return best, skipped
