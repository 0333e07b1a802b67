"""The exceptions tasker raises.

Every error is a :class:`TaskerError`; where one resembles a builtin it subclasses that
too, so ``except RuntimeError`` or ``except TimeoutError`` keeps working::

    TaskerError(Exception)
    ├── ManagerStoppedError(TaskerError, RuntimeError)  submit after stop/kill; double stop/kill
    ├── TaskKilledError(TaskerError)                    dropped or interrupted by kill()
    ├── RetriesExhaustedError(TaskerError)              .attempts, .cause
    ├── ResourceCreationError(TaskerError)              on_create failed where a caller needed it
    ├── CancelledError(TaskerError)                     Context.check(), or a cancelled submission
    ├── TaskTimeoutError(TaskerError, TimeoutError)     the task ran past its timeout
    └── QueueFullError(TaskerError, queue.Full)         a bounded lane had no room in time
"""

from __future__ import annotations

import queue
from typing import Any

__all__ = [
    "CancelledError",
    "ManagerStoppedError",
    "QueueFullError",
    "ResourceCreationError",
    "RetriesExhaustedError",
    "TaskKilledError",
    "TaskTimeoutError",
    "TaskerError",
]


class TaskerError(Exception):
    """Base class of every error tasker raises."""


class ManagerStoppedError(TaskerError, RuntimeError):
    """The manager no longer accepts work: ``stop()``/``kill()`` has begun, or was called twice."""


class TaskKilledError(TaskerError):
    """The task was dropped from a queue or interrupted by ``kill()``."""


class RetriesExhaustedError(TaskerError):
    """A task failed unhealthily on its last allowed delivery.

    Attributes:
        attempts: how many times the task was delivered to a worker.
        cause: the exception of the last attempt (also ``__cause__``).
    """

    def __init__(self, attempts: int, cause: BaseException) -> None:
        super().__init__(f"task failed unhealthily on all {attempts} attempts: {cause!r}")
        self.attempts = attempts
        self.cause = cause
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        # ``args`` holds only the message, which __init__ cannot take back: without this
        # it cannot be unpickled, and Celery hands a client a bare TaskerError instead.
        return type(self), (self.attempts, self.cause), self.__dict__


class ResourceCreationError(TaskerError):
    """``on_create`` failed where a caller needed a resource; ``__cause__`` is its exception."""


class CancelledError(TaskerError):
    """The context was cancelled, or the submission was cancelled before it ran."""


class TaskTimeoutError(TaskerError, TimeoutError):
    """The task ran longer than its timeout and was interrupted."""


class QueueFullError(TaskerError, queue.Full):
    """A bounded lane had no room (at once with ``block=False``, or within ``timeout``)."""
