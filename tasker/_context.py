"""Cooperative cancellation for gevent code: the counterpart of Go's ``context.Context``.

A :class:`Context` is cancelled by its own :meth:`~Context.cancel`, by its timeout, or
by the cancellation of any ancestor. Cancellation is observed lazily: ``cancelled``
walks the (short) chain of parents, so making a child costs one small object and no
registration with the parent — tasker makes one per task. Only :meth:`~Context.wait`
allocates an event, on each context of the chain it waits on.
"""

from __future__ import annotations

from sys import getrefcount
from typing import Any

import gevent
from gevent.event import Event

from ._errors import CancelledError

__all__ = ["UNSHARED", "Context"]


def _check_seconds(timeout: Any) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
    if not (0 <= timeout < float("inf")):  # rejects NaN too
        raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")


class Context:
    """A cancellation signal, optionally bound to a parent and a timeout.

    Args:
        parent: cancelling it cancels this context too.
    """

    __slots__ = ("_cancelled", "_event", "_parent", "_timer")

    def __init__(self, parent: Context | None = None) -> None:
        if parent is not None and not isinstance(parent, Context):
            raise TypeError(f"Context parent must be a Context or None, got {parent!r}")
        self._parent = parent
        self._cancelled = False
        self._event: Event | None = None
        self._timer: Any = None

    def child(self, timeout: float | None = None) -> Context:
        """A new context cancelled with this one, or after ``timeout`` seconds if given."""
        child = Context(self)
        if timeout is not None:
            _check_seconds(timeout)
            child._timer = gevent.get_hub().loop.timer(timeout)
            child._timer.start(child.cancel)
        return child

    def cancel(self) -> None:
        """Cancel this context and, through it, every descendant. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._event is not None:
            self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether this context or any ancestor has been cancelled."""
        ctx: Context | None = self
        while ctx is not None:
            if ctx._cancelled:
                return True
            ctx = ctx._parent
        return False

    def check(self) -> None:
        """Raise :class:`~tasker.CancelledError` if the context is cancelled."""
        if self.cancelled:
            raise CancelledError("context cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling greenlet until cancelled or ``timeout`` seconds pass.

        Returns:
            Whether the context is cancelled.

        Raises:
            TypeError, ValueError: ``timeout`` is not None or a finite number >= 0 (a NaN
                would stop the event loop's timer from ever firing).
        """
        if timeout is not None:
            _check_seconds(timeout)
        if self.cancelled:
            return True
        events = []
        ctx: Context | None = self
        while ctx is not None:
            if ctx._event is None:
                ctx._event = Event()
            events.append(ctx._event)
            ctx = ctx._parent
        gevent.wait(events, timeout=timeout, count=1)
        return self.cancelled

    def __repr__(self) -> str:
        return f"<Context {'cancelled' if self.cancelled else 'live'}>"


def _references_of_a_local() -> int:
    ctx = Context()
    return getrefcount(ctx)


# ``sys.getrefcount`` of a context that only a local variable holds, measured rather than
# assumed (interpreters differ): a worker reuses a finished task's context only then.
UNSHARED = _references_of_a_local()
