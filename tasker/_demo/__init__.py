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
- a 503 (with ``Retry-After: 1``) is a *healthy*, transient failure: the connection
  is fine; the manager's ``RetryPolicy`` retries the fetch after the server's delay on
  any worker, holding none meanwhile (``transient retries`` in the metrics, ``delayed``
  in the status line); a URL that answers 503 three times in a row gives its caller
  ``RetriesExhaustedError``;
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

One module per role: ``_options`` (the command line), ``_site`` (the flaky server),
``_fetch`` (connections, the fetch task, submissions and the tally of replies),
``_view`` (status line and summary), ``_shutdown`` (Ctrl-C) and ``_run`` (one run
and its verdict); :func:`main` is here.
"""

from __future__ import annotations

import sys

import gevent.monkey

from ._options import Options, parse_args
from ._run import EXIT_BROKEN, EXIT_INTERRUPTED, EXIT_OK, Verdict, run
from ._site import OK, RESET, SLOW, UNAVAILABLE, Site
from ._view import Display

__all__ = [
    "EXIT_BROKEN",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "OK",
    "RESET",
    "SLOW",
    "UNAVAILABLE",
    "Options",
    "Site",
    "Verdict",
    "main",
    "parse_args",
]


def main(argv: list[str]) -> int:
    """Entry point of ``python -m tasker demo ARGS``; returns the exit status."""
    # Patch first. tasker (with gevent, attrs, logging) is already imported when this
    # runs, via tasker/__main__; that is safe because none of them binds a socket, ssl
    # or thread object at import (tasker uses gevent primitives only, and gevent swaps
    # the locks logging made). What does bind them, http.client and gevent.pywsgi, is
    # imported inside the functions of _fetch and _site, after this line. Patching here
    # rather than at module level keeps `import tasker._demo` free of side effects.
    gevent.monkey.patch_all()
    opts = parse_args(argv)
    try:
        return run(opts, Display(sys.stdout))
    except KeyboardInterrupt:  # ^C outside the run, where our SIGINT handler is not installed
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
