"""The resource pool behind ``run_task``: resources made up front, lent one call at a time.

``run_task`` runs the task in the caller's own greenlet, bypassing the queues, with a
pooled resource if one is free or else a temporary one (created, used once,
destroyed). It has no health check and no retry. Its calls are recorded in the
metrics like queued tasks: an arrival, then a completion, failure or cancellation. The manager counts calls in flight so
``stop()`` waits for them and ``kill()`` can interrupt them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from greenlet import getcurrent

from ._context import Context
from ._core import NO_RESOURCE, Core, thrown_in
from ._errors import CancelledError, ResourceCreationError, TaskKilledError
from ._message import Interrupt
from ._types import TaskLifecycleTimestamps

__all__ = ["ResourcePool"]


class ResourcePool:
    """Free resources for ``run_task``, and the greenlets running it now."""

    def __init__(self, core: Core, resources: list[Any]) -> None:
        self._core = core
        self._free = resources
        self.running: list[Any] = []  # greenlets inside run_task (a list: calls may nest)
        self.destroying: set[Any] = set()  # of those, the ones in on_destroy: never interrupted

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def pop(self) -> Any:
        """One free resource, or NO_RESOURCE: for destruction at shutdown, one at a time."""
        return self._free.pop() if self._free else NO_RESOURCE

    def interruptible(self, me: Any) -> list[Any]:
        """The greenlets kill() interrupts: in run_task, not ``me``, not in on_destroy."""
        return [g for g in set(self.running) if g is not me and g not in self.destroying]

    def run(self, fn: Callable[[Context, Any], Any]) -> Any:
        core = self._core
        core.check_accepting()
        now = core.now
        queued_at = now()
        started_at: float | None = None
        finished_at = queued_at
        me = getcurrent()
        self.running.append(me)  # from here on stop() waits for the call, kill() interrupts it
        failed = cancelled = True  # what the collector hears unless the task ends by itself
        resource = NO_RESOURCE
        temporary = False
        try:
            core.record_arrival()
            if self._free:
                resource = self._free.pop()
            else:
                temporary = True
                try:
                    resource = core.on_create()
                except Exception as exc:
                    cancelled = False
                    raise ResourceCreationError(f"on_create raised {exc!r} for run_task") from exc
                except BaseException as exc:  # its own is a failure; thrown in (kill(), the caller's), not
                    cancelled = thrown_in(exc)
                    raise
            if core.killing:
                raise TaskKilledError("the manager was killed before the task started")
            ctx = Context(core.ctx)
            started_at = now()
            try:
                value = fn(ctx, resource)
            except Exception as exc:
                cancelled = isinstance(exc, CancelledError) and ctx.cancelled
                raise
            except BaseException as exc:  # as for a queued task: one the task raised itself is a failure
                cancelled = thrown_in(exc)
                raise
            failed = cancelled = False
            return value
        except Interrupt as interrupt:  # kill(): in on_create or in the task
            raise interrupt.error from None
        # Any other BaseException (the caller's own Timeout, its greenlet killed): it gave up.
        finally:
            finished_at = now()
            try:
                if resource is not NO_RESOURCE:
                    if temporary or core.tearing_down:  # torn down while it ran
                        self.destroying.add(me)
                        core.destroy(resource, caller=True)  # the caller's own interrupt goes on to it
                    else:
                        self._free.append(resource)
            finally:
                self.destroying.discard(me)
                self.running.remove(me)
                started = finished_at if started_at is None else started_at
                stamps = TaskLifecycleTimestamps(queued_at, started, finished_at)
                try:  # the caller's own Timeout landing in a collector that yields goes on to it
                    core.record(stamps, failed, cancelled, caller=True)
                finally:
                    core.progressed()
