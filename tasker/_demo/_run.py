"""One run of the demo: serve, fetch every URL, stop, report; the verdict is the exit status."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import attrs
import gevent

from .. import Collector, Config, RetryPolicy, TaskManager
from ._fetch import Connections, Tally, produce, transient
from ._shutdown import Shutdown
from ._site import HOST, Site, serve
from ._view import LEGEND, Peak, show_status, status_line, summary

if TYPE_CHECKING:
    from http.client import HTTPConnection

    from ._options import Options
    from ._view import Display

__all__ = ["EXIT_BROKEN", "EXIT_INTERRUPTED", "EXIT_OK", "Verdict", "run"]

STALL_SECONDS = 15.0  # longer than any fetch with its retries (connection timeout 10 s)
EXIT_OK, EXIT_BROKEN, EXIT_INTERRUPTED = 0, 1, 130  # 130: 128 + SIGINT, the shell's convention


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
        # A 503 is retried after its Retry-After, holding no worker meanwhile; twice at most.
        retry=RetryPolicy(retry_on=transient, attempts=2, base_delay=0.2),
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
    # Not interrupted, every URL should have been submitted: one that was not (the producer
    # failed) is missing too.
    unsent = 0 if shutdown.requested else opts.urls - tally.submitted
    verdict = Verdict(
        tally.submitted - tally.answered + unsent, connections.opened - connections.closed, shutdown.requested
    )
    if verdict.missing:
        display.say(f"ERROR: {verdict.missing} submissions got no reply")
    return verdict.exit_code
