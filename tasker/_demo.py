"""``python -m tasker demo``: thousands of real HTTP fetches over a flaky local server.

The demo starts a gevent WSGI server on ``127.0.0.1`` (an ephemeral port) that serves
``/item/0`` … ``/item/N-1``. Each request is delayed a little (a tenth of them a lot),
and with probability ``--flaky-rate`` it goes wrong: half of those reset the TCP
connection, half answer ``503 Service Unavailable``. Faults are drawn from the seed,
the path and how often that path was asked for, so a run is reproducible.

A :class:`~tasker.TaskManager` fetches every URL. Each worker owns one keep-alive
``http.client.HTTPConnection`` (opened by ``on_create``, closed by ``on_destroy``):

- a reset is a connection error, which ``check_health`` calls *unhealthy*: the
  supervisor retires the worker, a fresh connection replaces it and the fetch is
  retried (``retried`` in the metrics);
- a 503 is a *healthy* failure: the connection is fine, the caller gets the error;
- every 20th URL goes on the priority lane, every 50th is a callback submission;
- URLs arrive in waves, ``--rate`` per second on average: each wave is more than the
  base workers can fetch quickly, so the scaler starts burst workers (up to
  ``--max-workers``) and the priority lane overtakes the queued main lane.

A status line shows workers, queues, rates, p95 and progress (refreshed in place on a
terminal, one plain line a second otherwise). The first Ctrl-C stops gracefully (no
new URLs; queued ones still run), a second one kills. The summary ends with the count
of connections opened and closed.

Exit status: 0 when every submission got its reply and every connection was closed;
1 when a reply is missing or a connection leaked; 130 after Ctrl-C (when nothing
leaked).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import gevent
import gevent.monkey
from gevent.event import Event

from . import Collector, Config, Context, ManagerStoppedError, RetriesExhaustedError, TaskKilledError, TaskManager

if TYPE_CHECKING:
    from http.client import HTTPConnection

    from . import TaskResult

__all__ = ["main"]

HOST = "127.0.0.1"
SLOW_SHARE = 0.1  # share of requests that take SLOW_DELAY instead of FAST_DELAY
FAST_DELAY = (0.002, 0.012)  # seconds, uniform
SLOW_DELAY = (0.05, 0.12)  # seconds, uniform
LEGEND = (
    "status: elapsed, replies/URLs | workers base+burst | queued main+priority lane"
    " | arrivals and completions per s | p95 task time | retries"
)
WAVE_SECONDS = 0.5  # URLs arrive in a wave every half second (or one by one, if slower)
PRIORITY_EVERY = 20  # URL i goes on the priority lane when i % 20 == 0
CALLBACK_EVERY = 50  # URL i is a callback submission when i % 50 == 25
STALL_SECONDS = 15.0  # longer than any fetch with its retries (connection timeout 10 s)
EXIT_OK, EXIT_BROKEN, EXIT_INTERRUPTED = 0, 1, 130  # 130: 128 + SIGINT, the shell's convention

# -- options ------------------------------------------------------------------------


@attrs.frozen
class Options:
    """The command line, checked."""

    urls: int
    workers: int
    max_workers: int
    rate: float
    flaky_rate: float
    seed: int


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: list[str]) -> Options:
    """Parse ``argv`` (without the ``demo`` word); exits on ``--help`` or an error."""
    parser = argparse.ArgumentParser(
        prog="python -m tasker demo",
        description="Fetch thousands of URLs from a flaky local HTTP server with a tasker "
        "TaskManager whose workers each own a keep-alive connection.",
        epilog="Ctrl-C once stops gracefully, twice kills. Exit status: 0 all replies received "
        "and every connection closed; 1 a reply missing or a connection leaked; 130 interrupted.",
    )
    parser.add_argument("--urls", type=_positive_int, default=3000, help="URLs to fetch (default: 3000)")
    parser.add_argument("--workers", type=_positive_int, default=8, help="base workers (default: 8)")
    parser.add_argument(
        "--max-workers", type=_positive_int, default=None, help="base + burst ceiling (default: 4 x --workers)"
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=1000.0,
        help=f"URLs submitted per second, in a wave every {WAVE_SECONDS:g} s; 0 submits all at once (default: 1000)",
    )
    parser.add_argument(
        "--flaky-rate", type=_share, default=0.04, help="share of requests that reset or answer 503 (default: 0.04)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the server's faults and delays (default: 1)")
    ns = parser.parse_args(argv)
    max_workers = 4 * ns.workers if ns.max_workers is None else ns.max_workers
    if max_workers < ns.workers:
        parser.error(f"--max-workers ({max_workers}) must be >= --workers ({ns.workers})")
    return Options(ns.urls, ns.workers, max_workers, ns.rate, ns.flaky_rate, ns.seed)


# -- the flaky server ---------------------------------------------------------------

OK, SLOW, RESET, UNAVAILABLE = "ok", "slow", "reset", "503"
FATE_KEY = "tasker.demo.fate"


@attrs.frozen
class Fate:
    """What the server does with one request: wait ``delay`` seconds, then ``kind``."""

    kind: str
    delay: float


class Site:
    """The server's behaviour: a fate per request, and the WSGI app that answers."""

    def __init__(self, seed: int, flaky_rate: float) -> None:
        self._seed = seed
        self._flaky_rate = flaky_rate
        self._hits: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # requests per fate kind

    def decide(self, path: str) -> Fate:
        """The fate of this request: a function of the seed, the path and its hit count."""
        self._hits[path] += 1
        rng = random.Random(f"{self._seed}:{path}:{self._hits[path]}")
        draw = rng.random()
        if draw < self._flaky_rate / 2:
            kind = RESET
        elif draw < self._flaky_rate:
            kind = UNAVAILABLE
        else:
            kind = SLOW if rng.random() < SLOW_SHARE else OK
        fate = Fate(kind, rng.uniform(*(SLOW_DELAY if kind == SLOW else FAST_DELAY)))
        self.served[kind] += 1
        return fate

    def app(self, environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
        """The WSGI application: 503 or 200 as the request's fate says."""
        fate: Fate = environ[FATE_KEY]
        if fate.kind == UNAVAILABLE:
            status, body = "503 Service Unavailable", b"busy, try again later\n"
        else:
            status, body = "200 OK", f"this is {environ['PATH_INFO']}\n".encode()
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def serve(site: Site) -> Any:
    """Start a WSGI server for ``site`` on an ephemeral port of 127.0.0.1; return it."""
    # Imported here, after patch_all(): gevent.pywsgi imports socket, ssl and http.client.
    import socket

    from gevent.pywsgi import WSGIHandler, WSGIServer

    class FlakyHandler(WSGIHandler):  # type: ignore[misc]  # gevent ships no stubs
        """Applies the request's fate: a delay, then a connection reset or the app."""

        def handle(self) -> None:
            # pywsgi sends the headers and the body in two writes: without NODELAY,
            # Nagle's algorithm holds the body until the client's delayed ACK (~40 ms).
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()

        def run_application(self) -> None:
            fate = site.decide(self.path)
            gevent.sleep(fate.delay)
            if fate.kind == RESET:
                # Linger 0: closing sends a TCP RST, so the client's read fails (ECONNRESET).
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.environ[FATE_KEY] = fate
            super().run_application()

        def log_request(self) -> None:
            """No access log: thousands of lines would bury the status."""

    server = WSGIServer((HOST, 0), site.app, handler_class=FlakyHandler, log=None)
    server.start()
    return server


# -- the client side: resources and tasks -------------------------------------------


class HTTPStatusError(Exception):
    """The server answered, but not with 200: a healthy failure."""

    def __init__(self, status: int, path: str) -> None:
        super().__init__(f"HTTP {status} for {path}")
        self.status = status


class Connections:
    """``on_create``/``on_destroy``/``check_health`` for keep-alive HTTP connections."""

    def __init__(self, port: int) -> None:
        # Imported here, after patch_all(), so http.client uses gevent's sockets.
        import http.client

        self._port = port
        self._connection_class = http.client.HTTPConnection
        self._broken: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
        self.opened = 0
        self.closed = 0

    def open(self) -> HTTPConnection:
        """``on_create``: connect now, so a worker starts with a live connection."""
        connection = self._connection_class(HOST, self._port, timeout=10.0)
        connection.connect()
        self.opened += 1
        return connection

    def close(self, connection: HTTPConnection) -> None:
        """``on_destroy``: called once for every connection ``open`` made."""
        self.closed += 1
        connection.close()

    def healthy(self, exc: BaseException) -> bool:
        """``check_health``: a connection error means this connection is bad."""
        return not isinstance(exc, self._broken)


@attrs.frozen
class Fetch:
    """A task: ``Fetch(path)(ctx, connection)`` GETs ``path`` on the worker's connection."""

    path: str

    def __call__(self, ctx: Context, connection: HTTPConnection) -> int:
        """Return the body's length; raise ``HTTPStatusError`` unless the status is 200."""
        connection.request("GET", self.path)
        response = connection.getresponse()
        body = response.read()  # read it all, so the connection can be reused
        if response.status != 200:
            raise HTTPStatusError(response.status, self.path)
        return len(body)


# -- what the callers saw -------------------------------------------------------------


def outcome(error: BaseException | None) -> str:
    """A short name for how one submission ended."""
    if error is None:
        return "ok"
    if isinstance(error, HTTPStatusError):
        return f"HTTP {error.status}"
    if isinstance(error, RetriesExhaustedError):
        return "gave up after retries"
    if isinstance(error, TaskKilledError):
        return "killed"
    return type(error).__name__


class Tally:
    """Every reply as its caller saw it: outcome, and time from submission to reply."""

    def __init__(self) -> None:
        self.submitted = 0
        self.answered = 0
        self.outcomes: Counter[str] = Counter()
        self.settled = Event()  # set once closed and every submission has its reply
        self._closed = False
        self._latency = {"main": [0.0, 0], "priority": [0.0, 0]}  # lane: [sum of seconds, count]

    def close(self) -> None:
        """No more submissions: ``settled`` is set once every reply is in."""
        self._closed = True
        self._check_settled()

    def _check_settled(self) -> None:
        if self._closed and self.answered == self.submitted:
            self.settled.set()

    def track(self, reply: TaskResult, lane: str) -> None:
        """Record ``reply`` when it resolves."""
        self.submitted += 1
        started = time.monotonic()
        reply.rawlink(lambda r: self._record(lane, started, None if r.successful() else r.exception))

    def callback(self, lane: str) -> Callable[[object, BaseException | None], None]:
        """A ``callback(result, error)`` that records its call."""
        self.submitted += 1
        started = time.monotonic()
        return lambda result, error: self._record(lane, started, error)

    def _record(self, lane: str, started: float, error: BaseException | None) -> None:
        self.answered += 1
        self.outcomes[outcome(error)] += 1
        total = self._latency[lane]
        total[0] += time.monotonic() - started
        total[1] += 1
        self._check_settled()

    def mean_latency(self, lane: str) -> float:
        """Mean seconds from submission to reply on ``lane`` (0.0 before any)."""
        seconds, count = self._latency[lane]
        return seconds / count if count else 0.0


def submit(manager: TaskManager[HTTPConnection, int], tally: Tally, i: int) -> None:
    """Submit URL ``i``: a callback, a priority or a main-lane submission."""
    task = Fetch(f"/item/{i}")
    if i % CALLBACK_EVERY == CALLBACK_EVERY // 2:
        manager.queue_task_with_callback(task, tally.callback("main"))
    elif i % PRIORITY_EVERY == 0:
        tally.track(manager.queue_task_with_priority_async(task), "priority")
    else:
        tally.track(manager.queue_task_async(task), "main")


def produce(manager: TaskManager[HTTPConnection, int], tally: Tally, opts: Options, shutdown: Shutdown) -> None:
    """Submit the URLs in waves, ``opts.rate`` per second on average, until done or Ctrl-C.

    A wave is queued at once, every ``WAVE_SECONDS`` (everything at once if the rate is
    0): the base workers fall behind, the scaler bursts, and the priority lane shows.
    Below two URLs a second, each URL is a wave of its own.
    """
    wave = max(1, round(opts.rate * WAVE_SECONDS)) if opts.rate else opts.urls
    interval = wave / opts.rate if opts.rate else 0.0  # seconds between waves
    start = time.monotonic()
    for number, first in enumerate(range(0, opts.urls, wave)):
        gevent.sleep(max(0.0, start + number * interval - time.monotonic()))
        if shutdown.requested:
            return
        for i in range(first, min(first + wave, opts.urls)):
            submit(manager, tally, i)


# -- display and Ctrl-C ---------------------------------------------------------------


class Display:
    """Writes the status in place on a terminal, as plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream
        self.live = stream.isatty()
        self._status_shown = False  # a live status line is on screen, without newline

    def status(self, line: str) -> None:
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            self._write("\r\x1b[2K" + line[:width])  # back to column 0, clear the line
            self._status_shown = True
        else:
            self._write(line + "\n")

    def say(self, text: str) -> None:
        """Print ``text`` on lines of its own, keeping the last status on screen."""
        if self._status_shown:
            self._write("\n")
            self._status_shown = False
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:  # piped into `head`: carry on quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # no error at exit
            self._stream = None


class Shutdown:
    """Ctrl-C: the first stops gracefully, the second kills; also the normal stop."""

    def __init__(self, manager: TaskManager[HTTPConnection, int], display: Display) -> None:
        self._manager = manager
        self._display = display
        self._stopper: gevent.Greenlet | None = None
        self.presses = 0
        self.stopped = Event()  # set when manager.stop() has returned

    @property
    def requested(self) -> bool:
        """Whether Ctrl-C was pressed: submit nothing more."""
        return self.presses > 0

    def on_sigint(self) -> None:
        """The SIGINT handler; gevent runs it in a greenlet of its own."""
        self.presses += 1
        if self.presses == 1:
            self._display.say("^C stopping gracefully: no new URLs, queued ones still run (^C again to kill)")
            self.stop()
        elif self.presses == 2:
            self._display.say("^C killing: queued and running fetches fail with TaskKilledError")
            try:
                self._manager.kill()
            except ManagerStoppedError:
                self._display.say("(the manager had already stopped)")

    def describe(self) -> str:
        """How the manager ended, once ``stop()`` has returned."""
        if self.presses >= 2:
            return "second ^C: kill() failed the queued and running fetches (TaskKilledError)"
        drained = self._stopper is not None and self._stopper.value is True
        when = "^C: " if self.presses else "after the last reply: "
        return when + ("stop() ran every queued fetch, then closed every connection" if drained else "stop() escalated")

    def stop(self) -> gevent.Greenlet:
        """Start ``manager.stop()`` in a greenlet, once; a later kill() escalates it."""
        if self._stopper is None:
            self._stopper = gevent.spawn(self._manager.stop)
            self._stopper.rawlink(lambda _: self.stopped.set())
        return self._stopper


@attrs.define
class Peak:
    """The most workers seen at once."""

    base: int = 0
    burst: int = 0


def status_line(manager: TaskManager[HTTPConnection, int], tally: Tally, total: int, elapsed: float) -> str:
    """One line (see ``LEGEND``), its most telling fields first, for narrow terminals."""
    stats = manager.stats()
    m = manager.metrics()
    return (
        f"{elapsed:5.1f}s {tally.answered}/{total} | workers {stats.base_workers}+{stats.burst_workers}"
        f" | queued {stats.queued_tasks}+{stats.priority_tasks}"
        f" | in {m.task_arrival_rate:.0f}/s out {m.task_completion_rate:.0f}/s"
        f" | p95 {m.p95_execution_time * 1000:.0f} ms | retried {m.total_tasks_retried}"
    )


def show_status(
    manager: TaskManager[HTTPConnection, int], tally: Tally, total: int, display: Display, peak: Peak
) -> None:
    """Refresh the status (10 times a second live, every second as plain lines); track the peak."""
    start = time.monotonic()
    next_line = start + 1.0
    while True:
        gevent.sleep(0.1)
        stats = manager.stats()
        peak.base = max(peak.base, stats.base_workers)
        peak.burst = max(peak.burst, stats.burst_workers)
        now = time.monotonic()
        if display.live or now >= next_line:
            display.status(status_line(manager, tally, total, now - start))
            next_line += 1.0


# -- the run ----------------------------------------------------------------------------


@attrs.frozen
class Verdict:
    """What the run proved: every reply arrived, every connection was closed."""

    missing: int
    leaked: int
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.missing or self.leaked:
            return EXIT_BROKEN
        return EXIT_INTERRUPTED if self.interrupted else EXIT_OK


def summary(
    manager: TaskManager[HTTPConnection, int],
    tally: Tally,
    site: Site,
    connections: Connections,
    peak: Peak,
    opts: Options,
    shutdown: Shutdown,
    elapsed: float,
) -> Iterable[str]:
    """The closing report, line by line."""
    m = manager.metrics()
    outcomes = ", ".join(f"{count} {name}" for name, count in tally.outcomes.most_common())
    served = ", ".join(f"{count} {name}" for name, count in sorted(site.served.items()))
    leaked = connections.opened - connections.closed
    yield f"finished in {elapsed:.2f} s: submitted {tally.submitted} of {opts.urls} URLs, {tally.answered} replies"
    yield f"  replies     : {outcomes or 'none'}"
    yield (
        f"  metrics     : completed {m.total_tasks_completed}, failed {m.total_tasks_failed}, "
        f"retried {m.total_tasks_retried}, success rate {m.success_rate:.1%}, "
        f"p95 {m.p95_execution_time * 1000:.1f} ms, p99 {m.p99_execution_time * 1000:.1f} ms"
    )
    yield (
        f"  latency     : main lane {tally.mean_latency('main') * 1000:.1f} ms, "
        f"priority lane {tally.mean_latency('priority') * 1000:.1f} ms (mean, submission to reply)"
    )
    yield f"  workers     : {opts.workers} base, up to {opts.max_workers}; peak {peak.base} base + {peak.burst} burst"
    yield f"  shutdown    : {shutdown.describe()}"
    yield f"  stats()     : {manager.stats()}"
    yield f"  server      : {sum(site.served.values())} requests: {served}"
    yield (
        f"  connections : {connections.opened} opened (on_create), {connections.closed} closed (on_destroy)"
        f" -> {'all closed' if not leaked else f'{leaked} LEAKED'}"
    )


def run(opts: Options, display: Display) -> int:
    """Serve, fetch every URL, stop, report; return the exit status."""
    site = Site(opts.seed, opts.flaky_rate)
    server = serve(site)
    try:
        connections = Connections(server.server_port)
        display.say(
            f"tasker demo: {opts.urls} URLs at {opts.rate:g}/s from http://{HOST}:{server.server_port} "
            f"({opts.flaky_rate:.0%} flaky, seed {opts.seed}); {opts.workers} workers, up to {opts.max_workers}"
            " -- ^C stops gracefully, twice kills"
        )
        display.say(LEGEND)
        return fetch_all(opts, display, site, connections)
    finally:
        server.stop(timeout=1)


def await_replies(tally: Tally, shutdown: Shutdown) -> None:
    """Wait until every reply is in, ``stop()`` has returned, or replies stall.

    The replies come before ``stop()`` because a stopping manager starts no burst
    worker; after Ctrl-C, ``stop()`` is under way and settles every reply itself. A
    stall (no reply for ``STALL_SECONDS``) ends the wait, so a lost reply is reported
    rather than waited for forever.
    """
    while True:
        seen = tally.answered
        if gevent.wait([tally.settled, shutdown.stopped], count=1, timeout=STALL_SECONDS) or tally.answered == seen:
            return


def fetch_all(opts: Options, display: Display, site: Site, connections: Connections) -> int:
    """Run the manager over every URL, then print the summary; return the exit status."""
    config: Config[HTTPConnection] = Config(
        on_create=connections.open,
        on_destroy=connections.close,
        check_health=connections.healthy,
        worker_count=opts.workers,
        max_worker_count=opts.max_workers,
        resource_pool_size=0,  # no run_task here: open no connections for its pool
        collector=Collector(window=2.0),  # rates over the last 2 s, for a lively status
    )
    start = time.monotonic()
    manager: TaskManager[HTTPConnection, int] = TaskManager(config)
    tally, peak = Tally(), Peak()
    shutdown = Shutdown(manager, display)
    sigint = gevent.signal_handler(signal.SIGINT, shutdown.on_sigint)
    watcher = gevent.spawn(show_status, manager, tally, opts.urls, display, peak)
    try:
        gevent.spawn(produce, manager, tally, opts, shutdown).join()
        tally.close()
        await_replies(tally, shutdown)
        shutdown.stop().join()
    finally:
        sigint.cancel()
        watcher.kill()
    gevent.idle()  # let the hub deliver the last rawlink notifications to the tally
    elapsed = time.monotonic() - start
    display.status(status_line(manager, tally, opts.urls, elapsed))
    for line in summary(manager, tally, site, connections, peak, opts, shutdown, elapsed):
        display.say(line)
    verdict = Verdict(tally.submitted - tally.answered, connections.opened - connections.closed, shutdown.requested)
    if verdict.missing:
        display.say(f"ERROR: {verdict.missing} submissions got no reply")
    return verdict.exit_code


def main(argv: list[str]) -> int:
    """Entry point of ``python -m tasker demo ARGS``; returns the exit status."""
    # Patch first. tasker (with gevent, attrs, logging) is already imported when this
    # runs, via tasker/__main__; that is safe because none of them binds a socket, ssl
    # or thread object at import (tasker uses gevent primitives only, and gevent swaps
    # the locks logging made). What does bind them, http.client and gevent.pywsgi, is
    # imported inside the functions above, after this line. Patching here rather than
    # at module level keeps `import tasker._demo` free of side effects.
    gevent.monkey.patch_all()
    opts = parse_args(argv)
    try:
        return run(opts, Display(sys.stdout))
    except KeyboardInterrupt:  # ^C outside the run, where our SIGINT handler is not installed
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
