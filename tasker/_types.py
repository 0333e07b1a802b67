"""Value types and protocols of the public API: snapshots, timestamps, plug-in points."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import attrs

from ._context import Context

__all__ = [
    "Logger",
    "MetricsCollector",
    "TaskLifecycleTimestamps",
    "TaskMetrics",
    "TaskStats",
    "Tasker",
]

R_contra = TypeVar("R_contra", contravariant=True)
E_co = TypeVar("E_co", covariant=True)


class TaskLifecycleTimestamps(NamedTuple):
    """When one task was queued, started and finished, in seconds of the manager's clock.

    Immutable. A NamedTuple rather than a frozen attrs class because one is made for
    every task on the hot path, and a tuple is built about twice as fast.
    """

    queued_at: float
    """When the submission was accepted."""
    started_at: float
    """When its last attempt started. A task that never ran (failed or cancelled while
    queued) has ``started_at == finished_at``: its execution time reads 0 and its wait
    is the whole time it was queued. Never None, so ``finished_at - started_at`` always works."""
    finished_at: float
    """When its reply was resolved."""


@attrs.frozen
class TaskStats:
    """A snapshot of the manager's state; every count is >= 0."""

    base_workers: int
    """Workers that live as long as the manager."""
    active_workers: int
    """All live workers, base + burst (the seed's meaning); see ``busy_workers``."""
    burst_workers: int
    """Extra workers started by the scaler under load."""
    queued_tasks: int
    """Messages waiting in the main lane (those waiting for their key included)."""
    priority_tasks: int
    """Messages waiting in the priority lane (those waiting for their key included)."""
    available_resources: int
    """Free resources in the ``run_task`` pool."""
    blocked_submitters: int = 0
    """Submitters waiting for room in a bounded lane (``Config.max_queue_size``)."""
    busy_workers: int = 0
    """Workers running a task right now (an extension; ``active_workers - busy_workers`` are idle)."""
    delayed_tasks: int = 0
    """Messages waiting out a retry backoff (``RetryPolicy``); not in ``queued_tasks``."""
    key_waiting_tasks: int = 0
    """Of ``queued_tasks + priority_tasks``, the messages waiting for a slot or a rate token
    of their key."""
    key_in_flight: tuple[tuple[Hashable, int], ...] = ()
    """The keys with the most messages in flight (handed to a worker), most first, as
    ``(key, count)``: the top ``TOP_KEYS`` (10) only, so the snapshot stays small."""


@attrs.frozen
class TaskMetrics:
    """What a :class:`MetricsCollector` reports. Times in seconds, rates per second."""

    average_execution_time: float = 0.0
    """Mean time from start to finish of the tasks that succeeded."""
    min_execution_time: float = 0.0
    """Shortest execution time seen."""
    max_execution_time: float = 0.0
    """Longest execution time seen."""
    p95_execution_time: float = 0.0
    """95th percentile of execution time."""
    p99_execution_time: float = 0.0
    """99th percentile of execution time."""
    average_wait_time: float = 0.0
    """Mean time from queueing to start, of the tasks that succeeded."""
    task_arrival_rate: float = 0.0
    """Accepted submissions per second over the recent window."""
    task_completion_rate: float = 0.0
    """Tasks completed successfully per second over the recent window."""
    total_tasks_completed: int = 0
    """Tasks that succeeded."""
    total_tasks_failed: int = 0
    """Tasks that failed for good: after every allowed retry, or with a healthy error.
    Cancelled and killed tasks are not failures: see ``total_tasks_cancelled``."""
    total_tasks_retried: int = 0
    """Redeliveries after unhealthy failures."""
    success_rate: float = 0.0
    """completed / (completed + failed); 0.0 before any."""
    failure_rate: float = 0.0
    """failed / (completed + failed); 0.0 before any."""
    total_tasks_cancelled: int = 0
    """Tasks withdrawn by ``cancel()``, a cancelled context or ``kill()`` (an extension;
    counted by collectors that have ``record_cancellation``)."""
    total_transient_retries: int = 0
    """Retries of healthy failures by a ``RetryPolicy``, after a backoff (an extension;
    counted by collectors that have ``record_transient_retry``). Unhealthy redeliveries
    are ``total_tasks_retried``."""


@runtime_checkable
class Tasker(Protocol[R_contra, E_co]):
    """A task object: ``execute(ctx, resource)`` does the work and returns its value."""

    def execute(self, ctx: Context, resource: R_contra) -> E_co:
        """Run the task with a worker's resource."""


class Logger(Protocol):
    """Where tasker logs; a ``logging.Logger`` (or structlog's stdlib logger) fits."""

    def debug(self, msg: str, *args: Any) -> None: ...

    def info(self, msg: str, *args: Any) -> None: ...

    def warning(self, msg: str, *args: Any) -> None: ...

    def error(self, msg: str, *args: Any) -> None: ...


class MetricsCollector(Protocol):
    """Receives task lifecycle events and reports :class:`TaskMetrics`.

    The seed's four record methods and ``metrics``. A collector may also define
    ``record_cancellation(stamps)``: the manager looks it up once, when it starts, and
    calls it for a task that was cancelled or killed. A collector without it is not told
    of those tasks at all (they are neither completions nor failures). Likewise
    ``record_transient_retry()``, called when a ``RetryPolicy`` schedules a retry of a
    healthy failure (``record_retry`` is only for unhealthy redeliveries).
    """

    def record_arrival(self) -> None:
        """A submission was accepted (once per submission, not per retry)."""

    def record_completion(self, stamps: TaskLifecycleTimestamps) -> None:
        """A task succeeded (a queued task, or a ``run_task`` call)."""

    def record_failure(self, stamps: TaskLifecycleTimestamps) -> None:
        """A task failed for good: not for a redelivered attempt, not for a cancel or kill."""

    def record_retry(self) -> None:
        """A message was redelivered after an unhealthy failure."""

    def metrics(self) -> TaskMetrics:
        """A snapshot of what has been recorded."""
