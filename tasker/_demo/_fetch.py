"""The client side: a keep-alive connection per worker, the fetch task, and its callers.

:class:`Connections` gives the manager ``on_create``, ``on_destroy`` and
``check_health``; :class:`Fetch` is the task; :func:`produce` submits the URLs in
waves and :class:`Tally` records every reply as its caller saw it. ``http.client`` is
imported inside :class:`Connections`, after ``patch_all()``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import gevent
from gevent.event import Event

from .. import Context, RetriesExhaustedError, TaskKilledError, TaskManager
from ._options import WAVE_SECONDS, Options
from ._site import HOST

if TYPE_CHECKING:
    from http.client import HTTPConnection

    from .. import TaskResult
    from ._shutdown import Shutdown

__all__ = ["Connections", "Fetch", "HTTPStatusError", "Tally", "outcome", "produce", "submit", "transient"]

PRIORITY_EVERY = 20  # URL i goes on the priority lane when i % 20 == 0
CALLBACK_EVERY = 50  # URL i is a callback submission when i % 50 == 25


# -- the client side: resources and tasks -------------------------------------------


class HTTPStatusError(Exception):
    """The server answered, but not with 200: a healthy failure.

    ``retry_after`` is the server's ``Retry-After`` in seconds (None without one): the
    delay hint that :class:`~tasker.RetryPolicy` honours.
    """

    def __init__(self, status: int, path: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} for {path}")
        self.status = status
        self.retry_after = retry_after


def transient(exc: BaseException) -> bool:
    """The demo's retry predicate: a 429 or 503 is worth trying again later."""
    return isinstance(exc, HTTPStatusError) and exc.status in (429, 503)


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
            header = response.getheader("Retry-After") or ""
            raise HTTPStatusError(response.status, self.path, float(header) if header.isdigit() else None)
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
