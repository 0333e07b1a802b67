"""The one Celery internal this integration reads, kept here alone.

A cold shutdown (SIGQUIT, or a second Ctrl+C) kills the task greenlets of a gevent
pool with ``GreenletExit``, which Celery's gevent pool then reports as a *success*,
and acks. Celery has no public hook that runs before those kills (the public
``worker_shutting_down`` signal is sent after them), so :func:`cold_shutdown_started`
reads ``celery.worker.state.should_terminate``, which ``on_cold_shutdown`` sets before
it joins the killed greenlets. ``tests/test_celery_unit.py`` fails loudly if that
attribute goes away.
"""

from __future__ import annotations

from celery.worker import state as _worker_state  # type: ignore[import-untyped]

__all__ = ["cold_shutdown_started"]


def cold_shutdown_started() -> bool:
    """True once this worker process has begun a cold (terminating) shutdown."""
    return bool(_worker_state.should_terminate)
