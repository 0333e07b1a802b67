"""The resource pool behind ``run_task``: resources made up front, lent one call at a time.

``run_task`` runs the task in the caller's own greenlet, bypassing the queues, with a
pooled resource if one is free or else a temporary one (created, used once,
destroyed). It has no health check and no retry. Its calls are recorded in the
metrics like queued tasks: an arrival, then a completion, failure or cancellation. The manager counts calls in flight so
``stop()`` waits for them and ``kill()`` can interrupt them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent

from ._context import Context
from ._errors import CancelledError, ManagerStoppedError, ResourceCreationError, TaskKilledError
from ._message import Interrupt
from ._types import TaskLifecycleTimestamps
from ._worker import NO_RESOURCE

if TYPE_CHECKING:
    from ._manager import TaskManager

__all__ = ["ResourcePool"]


class ResourcePool:
    """Free resources for ``run_task``, and the greenlets running it now."""

    def __init__(self, manager: TaskManager[Any, Any], resources: list[Any]) -> None:
        self._manager = manager
        self._free = resources
        self.running: list[Any] = []  # greenlets inside a run_task task, for kill()
        self.in_flight = 0

    @property
    def available(self) -> int:
        return len(self._free)

    def take_all(self) -> list[Any]:
        """Empty the pool, for destruction at shutdown."""
        free, self._free = self._free, []
        return free

    def run(self, fn: Callable[[Context, Any], Any]) -> Any:
        manager = self._manager
        if not manager._accepting:
            raise ManagerStoppedError("the manager is stopped; run_task is not accepted")
        now = manager._now
        queued_at = now()
        started_at: float | None = None
        manager._record_arrival()
        self.in_flight += 1
        failed = cancelled = True  # what the collector hears unless the task ends by itself

        def record() -> None:
            finished = now()
            stamps = TaskLifecycleTimestamps(queued_at, finished if started_at is None else started_at, finished)
            manager._record(stamps, failed, cancelled)

        try:
            resource = self._free.pop() if self._free else NO_RESOURCE
            temporary = resource is NO_RESOURCE
            if temporary:
                try:
                    resource = manager._config.on_create()
                except Exception as exc:
                    cancelled = False
                    record()
                    raise ResourceCreationError(f"on_create raised {exc!r} for run_task") from exc
            try:
                if manager._killing:
                    record()
                    raise TaskKilledError("the manager was killed before the task started")
                current = getcurrent()
                self.running.append(current)
                ctx = Context(manager._ctx)
                started_at = now()
                try:
                    value = fn(ctx, resource)
                except Interrupt as interrupt:  # kill(): cancelled
                    record()
                    raise interrupt.error from None
                except Exception as exc:
                    cancelled = isinstance(exc, CancelledError) and ctx.cancelled
                    record()
                    raise
                except BaseException:  # the caller's own Timeout, or its greenlet killed: it gave up
                    record()
                    raise
                finally:
                    self.running.remove(current)
                failed = cancelled = False
                record()
                return value
            finally:
                if temporary or manager._tearing_down:  # torn down under us: kill() from this task
                    manager._destroy(resource)
                else:
                    self._free.append(resource)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                manager._check_quiet()
