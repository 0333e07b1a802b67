"""B9 and B10: what cancelling costs, against how much is queued or in flight.

B9 times ``cancel()`` of queued messages scattered through a lane ``depth`` deep; the
target is a cost per cancel that does not grow with the depth (O(1)). B10 times leaving
``imap_unordered`` and ``map`` early with ``in_flight`` items read ahead, and the same
at a tenth of that, to show it linear.

Both collect garbage before each timed part: a full collection of the million objects
that filling the queue allocated would otherwise land, by chance, inside a timing of
a thousand cancels.
"""

from __future__ import annotations

import gc
import itertools
import random
import time

import attrs
import gevent

from .._config import Config
from .._context import Context
from .._manager import TaskManager
from ._impls import _noop

__all__ = ["BreakOutResult", "CancelResult", "break_out_cost", "cancel_cost"]


@attrs.frozen
class CancelResult:
    """B9: the cost of one ``cancel()`` of a queued message, ``depth`` messages queued."""

    depth: int
    cancels: int  # cancels timed per round
    per_cancel: float  # seconds, best round


@attrs.frozen
class BreakOutResult:
    """B10: the time to leave ``method`` early with ``in_flight`` items in flight."""

    method: str  # "imap_unordered" | "map"
    in_flight: int  # items cancelled by the cleanup
    seconds: float  # close() of the generator, best run
    queued_left: int  # stats().queued_tasks after the cleanup: 0

    @property
    def per_item(self) -> float:
        return self.seconds / self.in_flight


def _manager(workers: int) -> TaskManager[object, object]:
    config: Config[object] = Config(
        on_create=object, worker_count=workers, max_worker_count=workers, resource_pool_size=0
    )
    return TaskManager(config)


def cancel_cost(depth: int, cancels: int = 1000, rounds: int = 3) -> CancelResult:
    """B9: queue ``depth`` no-op tasks, then time ``cancels`` cancels at random places.

    Nothing yields while it runs, so the one worker never takes a message: every
    cancel withdraws a queued one. Each round cancels other messages (the best round
    is kept), spread over the whole lane in a random order.
    """
    cancels = max(1, min(cancels, depth // (rounds + 1)))
    manager = _manager(1)
    try:
        submit = manager.submit
        replies = [submit(_noop) for _ in range(depth)]
        order = list(range(depth))
        random.Random(depth).shuffle(order)
        best = float("inf")
        for round_ in range(rounds):
            victims = [replies[i] for i in order[round_ * cancels : (round_ + 1) * cancels]]
            gc.collect()
            start = time.perf_counter()
            for reply in victims:
                reply.cancel()
            best = min(best, (time.perf_counter() - start) / cancels)
        stats = manager.stats()
        if stats.queued_tasks != depth - rounds * cancels:
            raise RuntimeError(f"B9: {stats.queued_tasks} queued, expected {depth - rounds * cancels}")
        del replies
    finally:
        manager.kill()
    return CancelResult(depth, cancels, best)


def _item(ctx: Context, resource: object, item: int) -> int:
    """B10's task: the first item returns at once, the others sleep (cancellable)."""
    if item:
        ctx.wait(0.001)
    return item


def break_out_cost(method: str, in_flight: int, workers: int = 8, rounds: int = 1) -> BreakOutResult:
    """B10: read ``in_flight + 1`` items ahead, take the first result, then leave the loop.

    The timed part is ``close()`` of the generator (what ``break`` does): it cancels
    every item still in flight, the queued and the running.
    """
    if method not in ("imap_unordered", "map"):
        raise ValueError(f"method must be 'imap_unordered' or 'map', got {method!r}")
    best = float("inf")
    left = 0
    for _ in range(rounds):
        manager = _manager(workers)
        try:
            results = getattr(manager, method)(_item, itertools.count(), max_in_flight=in_flight + 1)
            if next(results) != 0:
                raise RuntimeError("B10: item 0 comes first")
            gc.collect()
            start = time.perf_counter()
            results.close()
            best = min(best, time.perf_counter() - start)
            left = manager.stats().queued_tasks
            gevent.idle()
        finally:
            manager.stop()
    return BreakOutResult(method, in_flight, best, left)
