"""gunicorn settings for app.py: gevent workers, a tasker manager per worker process.

The hooks make the manager after the fork and stop it before the worker exits, within
``graceful_timeout`` counted from the SIGTERM that began the shutdown (gunicorn's master
SIGKILLs workers still alive after that).
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType
from typing import Any

bind = "127.0.0.1:8000"
worker_class = "gevent"
workers = 2
worker_connections = 1000
graceful_timeout = 10  # seconds; the master SIGKILLs workers still alive after this
STOP_MARGIN = 1.0  # seconds kept for closing connections and exiting after the drain

_shutdown_began: float | None = None


def post_worker_init(worker: Any) -> None:  # gunicorn ships no types
    """In the worker process, after the fork, gevent's monkey-patching and loading app.py."""
    import app

    app.start()

    # Note when the shutdown begins: gunicorn first waits for in-flight requests, and
    # the manager may only use what is left of graceful_timeout after that.
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        global _shutdown_began
        if _shutdown_began is None:
            _shutdown_began = time.monotonic()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker process once it stopped serving (the master calls it too, rarely)."""
    app = sys.modules.get("app")
    if app is None:  # the master, reaping a worker that vanished: nothing of ours here
        return
    spent = 0.0 if _shutdown_began is None else time.monotonic() - _shutdown_began
    budget = max(0.1, server.cfg.graceful_timeout - spent - STOP_MARGIN)
    drained = app.stop(timeout=budget)
    if drained is False:
        server.log.warning("tasker manager of worker %s did not drain within %.1f s", worker.pid, budget)
