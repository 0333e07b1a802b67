"""The twelve submission variants of the seed API, each a thin wrapper over ``submit``.

Blocking, callback and async forms, by main or priority lane, by normal or at-most-once
delivery, with the Go library's names in snake_case. They add nothing but the lane and
delivery flags: :meth:`TaskManager.submit` is the one primitive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._context import Context
from ._message import TaskResult
from ._types import Tasker

__all__ = ["Callback", "SeedVariants", "Task", "task_fn"]

R = TypeVar("R")
E = TypeVar("E")
Task = Callable[[Context, R], E] | Tasker[R, E]
Callback = Callable[[Any, BaseException | None], object]


def task_fn(task: Any) -> Callable[[Context, Any], Any]:
    """The function that runs ``task``: the task itself, or its ``execute`` method.

    A class with ``execute`` is refused: its instances are the tasks (called, the class
    would make one of them from the task's arguments, and fail).
    """
    if isinstance(task, type) and callable(getattr(task, "execute", None)):
        raise TypeError(f"task must be a task object, got the class {task!r}: pass an instance of it")
    if callable(task):
        return task  # type: ignore[no-any-return]
    execute = getattr(task, "execute", None)
    if callable(execute):
        return execute  # type: ignore[no-any-return]
    raise TypeError(f"task must be callable as task(ctx, resource) or have execute(ctx, resource), got {task!r}")


class SeedVariants(Generic[R, E]):
    """The seed's twelve ways to submit; mixed into :class:`~tasker.TaskManager`."""

    if TYPE_CHECKING:  # provided by TaskManager, whose signatures they are
        submit: Callable[..., TaskResult]
        _submit_with_callback: Callable[[Task[R, E], Callback, bool, bool], TaskResult]

    def queue_task(self, task: Task[R, E]) -> E:
        """Run ``task`` on the main lane; block this greenlet for its value or exception."""
        return self.submit(task).get()  # type: ignore[no-any-return]

    def queue_task_with_priority(self, task: Task[R, E]) -> E:
        """As :meth:`queue_task`, on the priority lane."""
        return self.submit(task, priority=True).get()  # type: ignore[no-any-return]

    def queue_task_once(self, task: Task[R, E]) -> E:
        """As :meth:`queue_task`, never redelivered after an unhealthy failure."""
        return self.submit(task, once=True).get()  # type: ignore[no-any-return]

    def queue_task_with_priority_once(self, task: Task[R, E]) -> E:
        """As :meth:`queue_task`, on the priority lane, at most once."""
        return self.submit(task, priority=True, once=True).get()  # type: ignore[no-any-return]

    def queue_task_async(self, task: Task[R, E]) -> TaskResult:
        """Queue ``task`` on the main lane; its reply, a ``gevent.event.AsyncResult``."""
        return self.submit(task)

    def queue_task_with_priority_async(self, task: Task[R, E]) -> TaskResult:
        """As :meth:`queue_task_async`, on the priority lane."""
        return self.submit(task, priority=True)

    def queue_task_once_async(self, task: Task[R, E]) -> TaskResult:
        """As :meth:`queue_task_async`, at most once."""
        return self.submit(task, once=True)

    def queue_task_with_priority_once_async(self, task: Task[R, E]) -> TaskResult:
        """As :meth:`queue_task_async`, on the priority lane, at most once."""
        return self.submit(task, priority=True, once=True)

    def queue_task_with_callback(self, task: Task[R, E], callback: Callback) -> None:
        """Queue ``task``; later call ``callback(result, error)`` once, in its own greenlet."""
        self._submit_with_callback(task, callback, False, False)

    def queue_task_with_priority_with_callback(self, task: Task[R, E], callback: Callback) -> None:
        """As :meth:`queue_task_with_callback`, on the priority lane."""
        self._submit_with_callback(task, callback, True, False)

    def queue_task_once_with_callback(self, task: Task[R, E], callback: Callback) -> None:
        """As :meth:`queue_task_with_callback`, at most once."""
        self._submit_with_callback(task, callback, False, True)

    def queue_task_with_priority_once_with_callback(self, task: Task[R, E], callback: Callback) -> None:
        """As :meth:`queue_task_with_callback`, on the priority lane, at most once."""
        self._submit_with_callback(task, callback, True, True)
