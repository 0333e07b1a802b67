"""Batch helpers: ``map`` (results in input order) and ``imap_unordered`` (as they finish).

Both read ``items`` lazily, keeping at most ``limit`` submissions in flight, so an
endless generator runs in constant memory. When the consumer stops early (``break``,
an exception, garbage collection of the generator) every submission still in flight is
cancelled, oldest first: queued ones never run, running ones see their context
cancelled. Each cancel is O(1) (the mailbox withdraws a queued message by tombstone),
so leaving early costs O(items in flight).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Protocol

from gevent.queue import SimpleQueue

from ._config import refuse_async
from ._context import Context
from ._message import TaskResult

__all__ = ["imap_unordered", "map_ordered"]

ItemFn = Callable[[Context, Any, Any], Any]
KeyFn = Callable[[Any], Any] | None  # item -> its submission's key


class Submitter(Protocol):
    """What the batch helpers need of a manager: its ``submit``."""

    def submit(self, task: Callable[[Context, Any], Any], *, priority: bool = ..., key: Any = ...) -> TaskResult: ...


def _bind(fn: ItemFn, item: Any) -> Callable[[Context, Any], Any]:
    return lambda ctx, resource: fn(ctx, resource, item)


def _checked(fn: ItemFn, items: Iterable[Any], key: KeyFn) -> Iterator[Any]:
    """Refuse a bad ``fn`` or ``items`` at the call, before any item is read."""
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(ctx, resource, item), got {fn!r}")
    refuse_async("fn", fn)
    if key is not None and not callable(key):
        raise TypeError(f"key must be None or callable as key(item), got {key!r}")
    return iter(items)


def _outcome(reply: TaskResult, return_exceptions: bool) -> Any:
    try:
        return reply.get()
    except Exception as exc:
        if return_exceptions:
            return exc
        raise


def _next(pending: deque[TaskResult], return_exceptions: bool) -> Any:
    """The oldest reply's outcome, then it leaves ``pending``.

    In that order: what is thrown into the consumer while it waits (its own
    ``gevent.Timeout``, a ``kill()``) must find the reply still in ``pending``, so that
    the cleanup cancels it with the rest.
    """
    outcome = _outcome(pending[0], return_exceptions)
    pending.popleft()
    return outcome


def _cancel_all(replies: deque[TaskResult]) -> None:
    """``cancel()`` of every reply, oldest first, in one pass of their manager's core; empties ``replies``."""
    if replies:
        replies[0]._spec[3].cancel_all(replies)


def map_ordered(
    manager: Submitter,
    fn: ItemFn,
    items: Iterable[Any],
    priority: bool,
    limit: int,
    return_exceptions: bool,
    key: KeyFn = None,
) -> Generator[Any, None, None]:
    source = _checked(fn, items, key)
    pending: deque[TaskResult] = deque()

    def run() -> Generator[Any, None, None]:
        try:
            for item in source:
                item_key = None if key is None else key(item)
                pending.append(manager.submit(_bind(fn, item), priority=priority, key=item_key))
                if len(pending) >= limit:
                    yield _next(pending, return_exceptions)
            while pending:
                yield _next(pending, return_exceptions)
        finally:
            _cancel_all(pending)

    return run()


def imap_unordered(
    manager: Submitter,
    fn: ItemFn,
    items: Iterable[Any],
    priority: bool,
    limit: int,
    return_exceptions: bool,
    key: KeyFn = None,
) -> Generator[Any, None, None]:
    source = _checked(fn, items, key)
    in_flight: dict[TaskResult, None] = {}  # in submission order, for the cleanup
    finished: SimpleQueue[TaskResult] = SimpleQueue()
    done = finished.put  # one bound method, linked to every reply and unlinked at the end

    def run() -> Generator[Any, None, None]:
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < limit:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    item_key = None if key is None else key(item)
                    reply = manager.submit(_bind(fn, item), priority=priority, key=item_key)
                    in_flight[reply] = None
                    reply.rawlink(done)
                if not in_flight:
                    return
                reply = finished.get()
                del in_flight[reply]
                yield _outcome(reply, return_exceptions)
        finally:
            replies = deque(in_flight)
            in_flight.clear()  # the cleanup lets go of each reply as it answers it
            for reply in replies:
                reply.unlink(done)  # nobody reads ``finished`` any more
            _cancel_all(replies)

    return run()
