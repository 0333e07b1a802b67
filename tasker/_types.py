"""Value types and protocols of the public API: snapshots, timestamps, plug-in points."""

from __future__ import annotations

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
    started_at: float | None
    """When a worker started its last attempt; None if it never ran (killed, cancelled)."""
    finished_at: float
    """When its reply was resolved."""


@attrs.frozen
class TaskStats:
    """A snapshot of the manager's state; every count is >= 0."""

    base_workers: int
    """Workers that live as long as the manager."""
    active_workers: int
    """Workers currently running a task."""
    burst_workers: int
    """Extra workers started by the scaler under load."""
    queued_tasks: int
    """Messages waiting in the main lane."""
    priority_tasks: int
    """Messages waiting in the priority lane."""
    available_resources: int
    """Free resources in the ``run_task`` pool."""
    blocked_submitters: int = 0
    """Submitters waiting for room in a bounded lane (``Config.max_queue_size``)."""


@attrs.frozen
class TaskMetrics:
    """What a :class:`MetricsCollector` reports. Times in seconds, rates per second."""

    average_execution_time: float = 0.0
    """Mean time from start to finish of the tasks that ran."""
    min_execution_time: float = 0.0
    """Shortest execution time seen."""
    max_execution_time: float = 0.0
    """Longest execution time seen."""
    p95_execution_time: float = 0.0
    """95th percentile of execution time."""
    p99_execution_time: float = 0.0
    """99th percentile of execution time."""
    average_wait_time: float = 0.0
    """Mean time from queueing to start."""
    task_arrival_rate: float = 0.0
    """Accepted submissions per second over the recent window."""
    task_completion_rate: float = 0.0
    """Terminal replies (success or failure) per second over the recent window."""
    total_tasks_completed: int = 0
    """Tasks that succeeded."""
    total_tasks_failed: int = 0
    """Tasks that ended with an exception (including killed and cancelled ones)."""
    total_tasks_retried: int = 0
    """Redeliveries after unhealthy failures."""
    success_rate: float = 0.0
    """completed / (completed + failed); 0.0 before any."""
    failure_rate: float = 0.0
    """failed / (completed + failed); 0.0 before any."""


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
    """Receives task lifecycle events and reports :class:`TaskMetrics`."""

    def record_arrival(self) -> None:
        """A submission was accepted (once per submission, not per retry)."""

    def record_completion(self, stamps: TaskLifecycleTimestamps) -> None:
        """A task succeeded."""

    def record_failure(self, stamps: TaskLifecycleTimestamps) -> None:
        """A task ended with an exception (terminally: not for a redelivered attempt)."""

    def record_retry(self) -> None:
        """A message was redelivered after an unhealthy failure."""

    def metrics(self) -> TaskMetrics:
        """A snapshot of what has been recorded."""
