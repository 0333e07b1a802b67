"""gunicorn settings for app.py: gevent workers, a tasker manager per worker process.

The hooks make the manager after the fork and stop it before the worker exits, within
``graceful_timeout`` counted from the SIGTERM that began the shutdown (gunicorn's master
SIGKILLs workers still alive after that): the stop begins at the SIGTERM, so requests
waiting on tasks are answered in time even when the work outlasts ``graceful_timeout``.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import gevent

bind = "127.0.0.1:8000"
worker_class = "gevent"
workers = 2
worker_connections = 1000
graceful_timeout = 10  # seconds; the master SIGKILLs workers still alive after this
STOP_MARGIN = 1.0  # seconds kept for answering, closing connections and exiting after the stop

_in_worker = False  # set in each worker by post_worker_init; the master keeps False
_stopping: Any = None  # the greenlet stopping this worker's manager, from the SIGTERM on


def post_worker_init(worker: Any) -> None:  # gunicorn ships no types
    """In the worker process, after the fork, gevent's monkey-patching and loading app.py."""
    global _in_worker
    import app

    app.start()
    _in_worker = True

    # On SIGTERM gunicorn waits for in-flight requests, and the master SIGKILLs the worker
    # graceful_timeout later: requests waiting on tasks must get their answers before
    # that, so the manager starts stopping now, in time, not in worker_exit.
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        global _stopping
        if _stopping is None:
            _stopping = gevent.spawn(_stop, worker)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _stop(worker: Any) -> None:
    """Drain the manager, then kill what is left, within graceful_timeout from now."""
    import app

    budget = max(0.1, worker.cfg.graceful_timeout - STOP_MARGIN - app.KILL_TIMEOUT)
    if app.stop(timeout=budget) is False:
        worker.log.warning("tasker manager of worker %s did not drain within %.1f s", worker.pid, budget)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker process once it stopped serving (the master calls it too, rarely)."""
    if not _in_worker:  # the master, reaping a worker that vanished (app.py may be preloaded)
        return
    if _stopping is None:  # no SIGTERM: max_requests, SIGINT/SIGQUIT, an abort
        _stop(worker)
    else:
        _stopping.join()  # its teardown closes the connections before the process exits
