"""Submissions as messages.

A submission is one object, :class:`TaskResult`: a ``gevent.event.AsyncResult`` (the
reply) that also carries the envelope — the task, its options (:data:`Spec`), its
attempt count, its timestamps, the lane it waits in. Making the envelope and the reply
one object saves an allocation and a reference cycle on the hot path. The reply is
resolved exactly once, by its worker (a success) or ``Core.finish`` (anything else);
whatever races them (kill, timeout, cancel) finds it ready and leaves it alone. Both
then let go of the task (``_fn`` becomes :func:`spent`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from gevent.event import AsyncResult

from ._context import Context

if TYPE_CHECKING:
    from ._retry import RetryPolicy

__all__ = ["Extra", "Interrupt", "Spec", "TaskResult", "spent"]


class Canceller(Protocol):
    """Where ``TaskResult.cancel()`` goes: the core of the manager that made the message."""

    hub: Any  # the manager's hub: a thread waits on the reply through it

    def cancel(self, msg: TaskResult) -> bool: ...

    def cancel_all(self, msgs: deque[TaskResult]) -> None: ...


class Extra:
    """What few messages carry: a key, a retry policy, the transient retries so far.

    Apart from the message so that an unkeyed submission pays for one slot, not three.
    """

    __slots__ = ("key", "retries", "retry")

    def __init__(self, key: Hashable | None, retry: RetryPolicy | None) -> None:
        self.key = key
        self.retry = retry
        self.retries = 0


Spec = tuple[bool, bool, "float | None", Canceller, "Extra | None"]
"""A submission's options and its manager: (priority, once, timeout, core, extra). One
tuple is shared by all the submissions a manager takes with the default options, so a
message carries one slot for five (each slot, and each object it refers to, is work
for every garbage collection while the message lives). A message with a key or a
retry policy has a tuple of its own, whose ``Extra`` it alone changes."""


def spent(ctx: Context, resource: Any) -> Any:
    """The task of an answered message: its own is let go once its reply is set, so a
    reply the caller keeps does not keep the task alive (nor what it holds), as a
    gevent ``Greenlet`` lets go of its function once it has run. Never called: nothing
    runs an answered message."""
    raise RuntimeError("tasker ran the task of a message already answered")


class TaskResult(AsyncResult):  # type: ignore[misc]  # gevent ships no stubs
    """The reply to one submission: a ``gevent.event.AsyncResult`` you can cancel.

    ``get()`` returns the task's value or raises its exception; ``cancel()`` withdraws
    the submission. Made by ``TaskManager.submit``, never directly.
    """

    _fn: Callable[[Context, Any], Any]
    _spec: Spec
    _queued_at: float
    _started_at: float | None
    _attempts: int
    _ctx: Context | None
    _lane: Any  # the mailbox lane it is queued in, else None; unset if it never was

    __slots__ = (
        "_attempts",
        "_ctx",
        "_fn",
        "_lane",
        "_queued_at",
        "_spec",
        "_started_at",
    )

    def cancel(self) -> bool:
        """Withdraw the submission.

        A message still queued is removed and resolves with
        :class:`~tasker.CancelledError`; a running task has its context cancelled (it
        may end early if it checks its context). Returns:
            True if the message was removed or its context cancelled, False if it had
            already finished.
        """
        return self._spec[3].cancel(self)

    @property
    def _priority(self) -> bool:
        return self._spec[0]

    @property
    def _once(self) -> bool:
        return self._spec[1]

    @property
    def _timeout(self) -> float | None:
        return self._spec[2]

    @property
    def _extra(self) -> Extra | None:
        return self._spec[4]

    @property
    def attempts(self) -> int:
        """How many times the task has been delivered to a worker so far."""
        return self._attempts

    @property
    def key(self) -> Hashable | None:
        """The submission's key (``submit(..., key=...)``), or None."""
        extra = self._extra
        return None if extra is None else extra.key

    _key = key  # the mailbox's name for it

    @property
    def retries(self) -> int:
        """Transient retries so far (by the retry policy; not unhealthy redeliveries)."""
        extra = self._extra
        return 0 if extra is None else extra.retries


class Interrupt(BaseException):
    """Thrown into a greenlet to stop the task it runs (timeout or kill).

    A BaseException, like ``gevent.Timeout``, so a task's ``except Exception`` does not
    swallow it. It never reaches a caller: the caller gets ``error``.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error
