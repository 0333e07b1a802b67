"""What this integration relies on in Celery beyond its public API, kept here alone.

A cold shutdown (SIGQUIT, or a second Ctrl+C) kills the task greenlets of a gevent
pool with ``GreenletExit``, which Celery's gevent pool then reports as a *success*,
and acks. Celery has no public hook that runs before those kills (the public
``worker_shutting_down`` signal is sent after them), so :func:`cold_shutdown_started`
reads ``celery.worker.state.should_terminate``, which ``on_cold_shutdown`` sets before
it joins the killed greenlets. ``tests/test_celery_unit.py`` fails loudly if that
attribute goes away. Under ``-P solo`` the handler runs in the task itself and fails
there (``NotImplementedError``: solo cannot terminate a job) after it has set the flag;
so whatever a cold shutdown throws into a waiting task, the job is requeued.

:func:`green_cold_shutdown` works around Celery's SIGQUIT handler under ``-P gevent``:
it blocks (it joins the pool), but Python runs a signal handler in whichever greenlet
is current. In the hub it fails with ``BlockingSwitchOutError``; in a pool greenlet it
joins itself and the worker hangs. Re-installed (with the stdlib's ``signal``) to run
in a greenlet of its own, it works whenever the signal comes.
"""

from __future__ import annotations

import signal
from typing import Any

import gevent
from celery.worker import state as _worker_state  # type: ignore[import-untyped]

__all__ = ["cold_shutdown_started", "green_cold_shutdown"]


def cold_shutdown_started() -> bool:
    """True once this worker process has begun a cold (terminating) shutdown."""
    return bool(_worker_state.should_terminate)


def green_cold_shutdown() -> None:
    """Make the SIGQUIT handler Celery installed run in a new greenlet (call after it did)."""
    handler = signal.getsignal(signal.SIGQUIT)
    if not callable(handler) or getattr(handler, "tasker_green", False):
        return

    def in_greenlet(signum: int, frame: Any) -> None:
        gevent.spawn(handler, signum, frame)

    in_greenlet.tasker_green = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGQUIT, in_greenlet)
