"""The worker side: which pools are served, the bootstep, the broker pool check.

- ``-P gevent`` (and ``solo``): one manager per worker process, made by a bootstep
  that starts after the pool and before the consumer, so before the first message.
- ``-P prefork``: one manager per child, made in ``worker_process_init`` and stopped
  in ``worker_process_shutdown`` (the bootstep does nothing in the parent).
- ``threads``, ``eventlet`` and other pools are refused: a gevent manager cannot be
  shared by OS threads, nor run under eventlet's hub.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from celery import bootsteps  # type: ignore[import-untyped]
from celery.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from ._integration import Integration

__all__ = ["PoolKind", "broker_pool_check", "make_step", "pool_kind", "restore_mutex_check"]

logger = logging.getLogger("tasker.contrib.celery")

PoolKind = Literal["gevent", "solo", "prefork"]

# The consumer's BRPOP connection, the restorer and a producer, beside one connection
# per concurrent ack.
BROKER_POOL_HEADROOM = 10


def pool_kind(pool_cls: Any) -> PoolKind:
    """The kind of a Celery pool class (or alias); ImproperlyConfigured for one tasker cannot serve."""
    module = pool_cls.split(":")[0] if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    name = module.rsplit(".", 1)[-1]
    if name in ("gevent", "solo", "prefork"):
        return name  # type: ignore[return-value]
    raise ImproperlyConfigured(
        f"tasker.contrib.celery cannot serve the {name!r} pool ({pool_cls!r}): a tasker manager is a set of "
        "gevent greenlets that OS threads cannot share and eventlet cannot run; start the worker with "
        "-P gevent (one manager per process), -P prefork (one per child) or -P solo"
    )


def broker_pool_check(app: Any, concurrency: int, fix: bool) -> None:
    """Make the Redis connection pool of the broker big enough for ``concurrency`` acks.

    Redis's transport gives each channel a pool of ``max_connections`` (10 by
    default); with ``acks_late``, ``-c 500`` greenlets ack at once, the pool
    overflows, acks fail and their messages run again. With ``fix`` the transport
    option is raised (the consumer's connection is made later, at start); without,
    a warning is logged if any task uses ``acks_late``.
    """
    probe = app.connection_for_read()
    try:
        if probe.transport.driver_type != "redis":
            return
        default = probe.transport.Channel.max_connections
    finally:
        probe.release()
    options = dict(app.conf.broker_transport_options or {})
    current = options.get("max_connections", default)
    needed = concurrency + BROKER_POOL_HEADROOM
    if current is not None and current >= needed:
        return
    if fix:
        options["max_connections"] = needed
        app.conf.broker_transport_options = options
        logger.info("tasker: raised broker_transport_options['max_connections'] from %s to %s", current, needed)
    elif app.conf.task_acks_late or any(getattr(t, "acks_late", False) for t in app.tasks.values()):
        logger.warning(
            "tasker: acks_late with concurrency %s but the Redis broker pool holds %s connections: acks "
            "will fail and their jobs run twice; set broker_transport_options={'max_connections': %s}",
            concurrency, current, needed,
        )  # fmt: skip


MUTEX_EXPIRE_FLOOR = 10.0  # seconds: far longer than one restore (milliseconds) takes


def restore_mutex_check(app: Any) -> None:
    """Keep a dead worker's hold on the Redis restore mutex shorter than the visibility timeout.

    Restoring ``unacked`` messages takes a Redis mutex that expires after
    ``unacked_mutex_expire`` (300 s by default). A worker SIGKILLed while it holds the
    mutex (its own restore, or kombu's on an empty poll) blocks every restore until then,
    so with a short ``visibility_timeout`` its messages came back minutes late. Unless
    the option is set, it is lowered to the visibility timeout (at least
    ``MUTEX_EXPIRE_FLOOR``), so a dead worker delays a restore no longer than its own
    messages wait anyway.
    """
    probe = app.connection_for_read()
    try:
        if probe.transport.driver_type != "redis":
            return
        channel = probe.transport.Channel
        default_expire, default_visibility = channel.unacked_mutex_expire, channel.visibility_timeout
    finally:
        probe.release()
    options = dict(app.conf.broker_transport_options or {})
    if "unacked_mutex_expire" in options:
        return
    visibility = float(options.get("visibility_timeout", default_visibility))
    expire = int(min(default_expire, max(MUTEX_EXPIRE_FLOOR, visibility)))
    if expire < default_expire:
        options["unacked_mutex_expire"] = expire
        app.conf.broker_transport_options = options


def make_step(integration: Integration[Any]) -> type[Any]:
    """A worker bootstep class bound to ``integration`` (Celery instantiates steps itself)."""

    class TaskerStep(bootsteps.StartStopStep):  # type: ignore[misc]
        """Starts this process's manager after the pool, before the consumer."""

        name = f"tasker.contrib.celery:TaskerStep[{integration.name}]"
        requires = ("celery.worker.components:Pool",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            kind = pool_kind(worker.pool_cls)
            integration._pool_kind = kind
            self.enabled = kind != "prefork"
            broker_pool_check(worker.app, worker.concurrency, integration.fix_broker_pool)
            restore_mutex_check(worker.app)
            super().__init__(worker, **kwargs)

        def start(self, worker: Any) -> None:
            integration._start_in_worker(worker.hostname)

        def stop(self, worker: Any) -> None:
            # The pool stops after this step and joins its tasks; the manager is stopped
            # after that, from the worker_shutdown signal.
            pass

        def terminate(self, worker: Any) -> None:
            integration.kill()

    return TaskerStep
