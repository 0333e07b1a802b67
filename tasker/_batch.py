"""Batch helpers: ``map`` (results in input order) and ``imap_unordered`` (as they finish).

Both read ``items`` lazily, keeping at most ``limit`` submissions in flight, so an
endless generator runs in constant memory. When the consumer stops early (``break``,
an exception, garbage collection of the generator) every submission still in flight is
cancelled: queued ones never run, running ones see their context cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from gevent.queue import SimpleQueue

from ._context import Context
from ._message import TaskResult

__all__ = ["imap_unordered", "map_ordered"]

ItemFn = Callable[[Context, Any, Any], Any]


class Submitter(Protocol):
    """What the batch helpers need of a manager: its ``submit``."""

    def submit(self, task: Callable[[Context, Any], Any], *, priority: bool = ...) -> TaskResult: ...


def _bind(fn: ItemFn, item: Any) -> Callable[[Context, Any], Any]:
    return lambda ctx, resource: fn(ctx, resource, item)


def _checked(fn: ItemFn, items: Iterable[Any]) -> Iterator[Any]:
    """Refuse a bad ``fn`` or ``items`` at the call, before any item is read."""
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(ctx, resource, item), got {fn!r}")
    return iter(items)


def _outcome(reply: TaskResult, return_exceptions: bool) -> Any:
    try:
        return reply.get()
    except Exception as exc:
        if return_exceptions:
            return exc
        raise


def map_ordered(
    manager: Submitter,
    fn: ItemFn,
    items: Iterable[Any],
    priority: bool,
    limit: int,
    return_exceptions: bool,
) -> Iterator[Any]:
    source = _checked(fn, items)
    pending: deque[TaskResult] = deque()

    def run() -> Iterator[Any]:
        try:
            for item in source:
                pending.append(manager.submit(_bind(fn, item), priority=priority))
                if len(pending) >= limit:
                    yield _outcome(pending.popleft(), return_exceptions)
            while pending:
                yield _outcome(pending.popleft(), return_exceptions)
        finally:
            for reply in pending:
                reply.cancel()

    return run()


def imap_unordered(
    manager: Submitter,
    fn: ItemFn,
    items: Iterable[Any],
    priority: bool,
    limit: int,
    return_exceptions: bool,
) -> Iterator[Any]:
    source = _checked(fn, items)
    in_flight: set[TaskResult] = set()
    finished: SimpleQueue[TaskResult] = SimpleQueue()

    def run() -> Iterator[Any]:
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < limit:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    reply = manager.submit(_bind(fn, item), priority=priority)
                    in_flight.add(reply)
                    reply.rawlink(finished.put)
                if not in_flight:
                    return
                reply = finished.get()
                in_flight.discard(reply)
                yield _outcome(reply, return_exceptions)
        finally:
            for reply in in_flight:
                reply.cancel()

    return run()
