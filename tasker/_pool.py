"""The resource pool behind ``run_task``: resources made up front, lent one call at a time.

``run_task`` runs the task in the caller's own greenlet, bypassing the queues, with a
pooled resource if one is free or else a temporary one (created, used once,
destroyed). It has no health check and no retry. The manager counts calls in flight so
``stop()`` waits for them and ``kill()`` can interrupt them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent

from ._context import Context
from ._errors import ManagerStoppedError, ResourceCreationError, TaskKilledError
from ._message import Interrupt
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
        self.in_flight += 1
        try:
            resource = self._free.pop() if self._free else NO_RESOURCE
            temporary = resource is NO_RESOURCE
            if temporary:
                try:
                    resource = manager._config.on_create()
                except Exception as exc:
                    raise ResourceCreationError(f"on_create raised {exc!r} for run_task") from exc
            try:
                if manager._killing:
                    raise TaskKilledError("the manager was killed before the task started")
                current = getcurrent()
                self.running.append(current)
                try:
                    return fn(Context(manager._ctx), resource)
                except Interrupt as interrupt:
                    raise interrupt.error from None
                finally:
                    self.running.remove(current)
            finally:
                if temporary or manager._tearing_down:  # torn down under us: kill() from this task
                    manager._destroy(resource)
                else:
                    self._free.append(resource)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                manager._check_quiet()
