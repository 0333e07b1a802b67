"""tasker inside Celery's workers (``pip install 'tasker[celery]'``).

A gevent process uses one core; Celery spreads jobs across processes and machines.
:class:`Integration` runs one :class:`tasker.TaskManager` per worker process (a
bootstep under ``-P gevent``/``solo``, ``worker_process_init`` under ``-P prefork``;
``threads`` and ``eventlet`` are refused), stops it after the pool has joined its
tasks on a warm shutdown, and kills it on a cold one::

    import tasker
    from tasker.contrib.celery import Integration

    tasks = Integration(app, make_config, stop_timeout=30)

    @app.task(bind=True, acks_late=True)
    def fetch(self, url):
        return tasks.call(self, lambda ctx, session: session.get(url).text, timeout=10)

    @tasks.batch_task(name="fetch_many", acks_late=True)
    def fetch_many(ctx, session, url):
        return session.get(url).text

How tasker's errors map onto Celery:

- ``ManagerStoppedError``, ``TaskKilledError``, ``QueueFullError`` from this worker's
  manager, or killed by a cold shutdown: requeued for another worker
  (``Reject(requeue=True)`` with ``acks_late``, else a retry with no countdown);
- ``RetriesExhaustedError``, ``ResourceCreationError``: a retry with exponential
  backoff, within the task's own ``max_retries``;
- the task's own exception, of any type (a tasker error from another manager too),
  ``TaskTimeoutError``: an ordinary failure.

The Celery recipe of the docs (``docs/recipes/celery.md``) has the same table.

With the Redis broker, the integration also restores the ``unacked`` messages of dead
workers on a timer (kombu does it only when a poll comes back empty, which a busy
gevent worker never sees), and raises the broker's connection pool to the worker's
concurrency so that ``acks_late`` acks never overflow it.
"""

try:
    import celery  # type: ignore[import-untyped]  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "tasker.contrib.celery needs the celery package; install it with: pip install 'tasker[celery]'"
    ) from exc

from ._integration import Integration
from ._outcomes import Backoff, classify

__all__ = ["Backoff", "Integration", "classify"]
