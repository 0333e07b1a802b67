"""``TaskManager.map`` and ``imap_unordered``: order, bounded read-ahead, errors and early exit."""

from __future__ import annotations

import gc
import itertools
import traceback
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import AsyncResult, Event
from helpers import Healthy, Manager, Resources

import tasker
from tasker import TaskManager

BATCH = ["map", "imap_unordered"]


def manager_with(res: Resources, workers: int) -> Manager:
    return TaskManager(res.config(worker_count=workers, max_worker_count=workers))


class FailOn:
    """fn(ctx, resource, i): raises its own Healthy error for the items in ``failing``, else returns i * 10."""

    def __init__(self, failing: tuple[int, ...]) -> None:
        self.errors = {i: Healthy(f"item {i}") for i in failing}

    def __call__(self, ctx: tasker.Context, resource: int, item: int) -> int:
        if item in self.errors:
            raise self.errors[item]
        return item * 10


class Chain:
    """fn(ctx, resource, i) where item i finishes only after item i + 1: completion runs in reverse."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = [Event() for _ in range(n)]
        self.finished: list[int] = []

    def __call__(self, ctx: tasker.Context, resource: int, item: int) -> int:
        if item + 1 < self.n:
            self.done[item + 1].wait()
        self.finished.append(item)
        self.done[item].set()
        return item * 10


class Counted:
    """An endless source that records, at each pull, how far it is ahead of the consumer."""

    def __init__(self) -> None:
        self.pulled = 0
        self.consumed = 0
        self.ahead: list[int] = []

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled += 1
            self.ahead.append(self.pulled - self.consumed)
            yield i


class TestOrder:
    """map yields in input order; imap_unordered yields as tasks finish."""

    def test_map_keeps_input_order(self) -> None:
        res = Resources()
        manager = manager_with(res, 6)
        chain = Chain(6)
        assert list(manager.map(chain, range(6))) == [0, 10, 20, 30, 40, 50]
        assert chain.finished == [5, 4, 3, 2, 1, 0]  # they finished in reverse
        assert manager.stop() is True

    def test_imap_unordered_yields_as_they_finish(self) -> None:
        res = Resources()
        manager = manager_with(res, 6)
        chain = Chain(6)
        assert list(manager.imap_unordered(chain, range(6))) == [50, 40, 30, 20, 10, 0]
        assert chain.finished == [5, 4, 3, 2, 1, 0]
        assert manager.stop() is True

    def test_imap_unordered_first_result_does_not_wait_for_a_slow_first_item(self) -> None:
        res = Resources()
        manager = manager_with(res, 2)
        release = Event()

        def fn(ctx: tasker.Context, resource: int, item: str) -> str:
            if item == "slow":
                release.wait()
            return item

        results = manager.imap_unordered(fn, ["slow", "fast"])
        assert next(results) == "fast"
        release.set()
        assert next(results) == "slow"
        with pytest.raises(StopIteration):
            next(results)
        assert manager.stop() is True

    @pytest.mark.parametrize("method", BATCH)
    def test_passes_each_item_with_context_and_resource(self, method: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, resource_pool_size=0))
        seen: list[tuple[bool, int, str]] = []

        def fn(ctx: tasker.Context, resource: int, item: str) -> str:
            seen.append((ctx.cancelled, resource, item))
            return item.upper()

        assert sorted(getattr(manager, method)(fn, iter("abc"))) == ["A", "B", "C"]
        assert sorted(seen) == [(False, 1, "a"), (False, 1, "b"), (False, 1, "c")]
        assert list(getattr(manager, method)(fn, [])) == []
        assert manager.stop() is True

    @pytest.mark.parametrize("method", BATCH)
    def test_priority_lane(self, method: str) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        started, release = Event(), Event()

        def hold(ctx: tasker.Context, resource: int) -> None:
            started.set()
            release.wait()

        manager.queue_task_async(hold)
        started.wait()
        results = getattr(manager, method)(lambda ctx, r, i: i, range(3), priority=True, max_in_flight=3)
        waiter = gevent.spawn(list, results)
        gevent.idle()
        stats = manager.stats()
        assert (stats.priority_tasks, stats.queued_tasks) == (3, 0)
        release.set()
        assert sorted(waiter.get()) == [0, 1, 2]
        assert manager.stop() is True


class TestReadAhead:
    """max_in_flight bounds how far the source is read ahead of the consumer, even for an endless source."""

    @pytest.mark.parametrize("method", BATCH)
    @pytest.mark.parametrize("limit", [1, 3, 7])
    def test_endless_source(self, method: str, limit: int) -> None:
        res = Resources()
        manager = manager_with(res, 2)
        source = Counted()
        results = getattr(manager, method)(lambda ctx, r, i: i, source, max_in_flight=limit)
        got = []
        for value in itertools.islice(results, 25):
            source.consumed += 1
            got.append(value)
        results.close()
        if method == "map":
            assert got == list(range(25))
        else:
            assert len(set(got)) == 25
        assert max(source.ahead) <= limit + 1
        assert max(source.ahead) >= limit  # it does read ahead, up to the limit
        assert manager.stop() is True

    @pytest.mark.parametrize("method", BATCH)
    def test_default_is_twice_max_worker_count(self, method: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=3))
        source = Counted()
        results = getattr(manager, method)(lambda ctx, r, i: i, source)
        for _ in itertools.islice(results, 10):
            source.consumed += 1
        results.close()
        assert 6 <= max(source.ahead) <= 7
        assert manager.stop() is True

    @pytest.mark.parametrize("method", BATCH)
    def test_nothing_is_read_before_iteration(self, method: str) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        source = Counted()
        results = getattr(manager, method)(lambda ctx, r, i: i, source, max_in_flight=2)
        assert source.pulled == 0
        results.close()
        assert source.pulled == 0
        assert manager.stop() is True


class Blocking:
    """fn: item 1 raises Healthy, item 2 blocks (until released) and records its context, others record a run."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self.started = Event()
        self.release = Event()
        self.ctx: tasker.Context | None = None
        self.error = Healthy("item 1 failed")

    def __call__(self, ctx: tasker.Context, resource: int, item: int) -> int:
        self.ran.append(item)
        if item == 1:
            raise self.error
        if item == 2:
            self.ctx = ctx
            self.started.set()
            self.release.wait()
        return item


class TestErrors:
    """An item's error is raised at its place and cancels the rest; return_exceptions yields it and goes on."""

    @pytest.mark.parametrize("method", BATCH)
    def test_raises_at_its_place_and_cancels_in_flight(self, method: str) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        fn = Blocking()
        results = getattr(manager, method)(fn, range(6), max_in_flight=10)
        assert next(results) == 0
        fn.started.wait()  # item 1 has failed, item 2 runs, items 3-5 wait in the queue
        with pytest.raises(Healthy) as info:
            next(results)
        assert info.value is fn.error
        assert fn.ctx is not None and fn.ctx.cancelled  # the running one is cancelled
        assert manager.stats().queued_tasks == 0  # the queued ones are withdrawn
        fn.release.set()
        assert manager.stop() is True
        assert fn.ran == [0, 1, 2]
        with pytest.raises(StopIteration):
            next(results)

    def test_map_return_exceptions(self) -> None:
        """Regression: map used to yield None for a reply not ready yet when it got to it."""
        res = Resources()
        manager = manager_with(res, 2)
        fn = FailOn((1, 3))
        results = list(manager.map(fn, range(5), return_exceptions=True))
        assert manager.stop() is True
        assert results == [0, fn.errors[1], 20, fn.errors[3], 40]
        assert results[1] is fn.errors[1] and results[3] is fn.errors[3]

    def test_map_return_exceptions_of_finished_replies(self) -> None:
        res = Resources()
        manager = manager_with(res, 2)
        errors = {i: Healthy(f"item {i}") for i in (1, 3)}
        finished = Event()
        count: list[int] = []

        def fn(ctx: tasker.Context, resource: int, item: int) -> int:
            count.append(item)
            if len(count) == 5:
                finished.set()
            if item in errors:
                raise errors[item]
            return item * 10

        def source() -> Iterator[int]:
            yield from range(5)
            finished.wait()  # every reply is ready before map inspects the first one

        results = list(manager.map(fn, source(), return_exceptions=True, max_in_flight=10))
        assert results == [0, errors[1], 20, errors[3], 40]
        assert results[1] is errors[1] and results[3] is errors[3]
        assert manager.stop() is True

    def test_imap_unordered_return_exceptions(self) -> None:
        res = Resources()
        manager = manager_with(res, 2)
        fn = FailOn((0, 2))
        results = list(manager.imap_unordered(fn, range(4), return_exceptions=True))
        assert len(results) == 4
        assert sorted(r for r in results if isinstance(r, int)) == [10, 30]
        assert {id(r) for r in results if isinstance(r, Healthy)} == {id(e) for e in fn.errors.values()}
        assert manager.stop() is True


class TestEarlyExit:
    """Leaving the loop early (break, close) cancels what is still in flight: queued items never run."""

    @pytest.mark.parametrize("method", BATCH)
    @pytest.mark.parametrize("how", ["break", "close"])
    def test_cancels_queued(self, method: str, how: str) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        ran: list[int] = []
        started, release = Event(), Event()
        contexts: list[tasker.Context] = []

        def fn(ctx: tasker.Context, resource: int, item: int) -> int:
            ran.append(item)
            if item == 1:
                contexts.append(ctx)
                started.set()
                release.wait()
            return item

        if how == "break":
            for value in getattr(manager, method)(fn, range(10), max_in_flight=5):
                assert value == 0
                started.wait()
                break
        else:
            results = getattr(manager, method)(fn, range(10), max_in_flight=5)
            assert next(results) == 0
            started.wait()
            results.close()
        assert manager.stats().queued_tasks == 0
        assert contexts[0].cancelled
        release.set()
        assert manager.stop() is True
        assert ran == [0, 1]  # items 2-4 were queued and withdrawn; 5-9 never submitted


class TestEarlyExitCancelsEverything:
    """Leaving early cancels every item in flight: the queued never run, the running see a cancelled context."""

    @pytest.mark.parametrize("method", BATCH)
    def test_every_item_in_flight(self, method: str) -> None:
        res = Resources()
        workers = 3
        manager = manager_with(res, workers)
        ran: list[int] = []
        running: dict[int, tasker.Context] = {}
        all_running, release = Event(), Event()

        def fn(ctx: tasker.Context, resource: int, item: int) -> int:
            ran.append(item)
            if item:
                running[item] = ctx
                if len(running) == workers:
                    all_running.set()
                release.wait()
            return item

        results = getattr(manager, method)(fn, range(1000), max_in_flight=100)
        assert next(results) == 0
        assert all_running.wait(5)
        stats = manager.stats()
        assert stats.queued_tasks == 99 - workers  # the rest of the read-ahead (item 0 is done) is queued
        results.close()
        assert manager.stats().queued_tasks == 0
        assert sorted(running) == [1, 2, 3]
        assert all(ctx.cancelled for ctx in running.values())
        metrics = manager.metrics()
        assert metrics.total_tasks_cancelled == 99 - workers  # withdrawn from the queue at once
        release.set()
        assert manager.stop() is True
        assert sorted(ran) == [0, 1, 2, 3]  # nothing queued ever ran
        assert manager.metrics().total_tasks_completed == 1 + workers  # the running ones ended normally
        res.assert_all_destroyed_once()

    def test_imap_unordered_leaves_no_link_behind(self) -> None:
        manager, replies, fn, started, release = spied_with_item_1_blocking()

        results = manager.imap_unordered(fn, range(10), max_in_flight=5)
        assert next(results) == 0
        assert started.wait(5)
        results.close()
        assert all(reply.linkcount() == 0 for reply in replies[1:])  # cleanup unlinked the consumer
        release.set()
        assert manager.stop() is True


class TestEarlyExitReplies:
    """What leaving early resolves: each withdrawn reply, once, like any ``AsyncResult`` given an exception."""

    @pytest.mark.parametrize("method", BATCH)
    def test_each_withdrawn_reply_answers_like_an_async_result_with_an_exception(self, method: str) -> None:
        manager, replies, fn, started, release = spied_with_item_1_blocking()

        results = getattr(manager, method)(fn, range(10), max_in_flight=6)
        assert next(results) == 0
        assert started.wait(5)
        withdrawn = replies[2:]  # item 1 runs; 2-5 are queued
        calls: dict[int, int] = {}
        all_called = Event()

        def link(reply: Any) -> None:
            calls[id(reply)] = calls.get(id(reply), 0) + 1
            if len(calls) == len(withdrawn):
                all_called.set()

        for reply in withdrawn:
            reply.rawlink(link)
        results.close()
        assert all(reply.ready() and not reply.successful() for reply in withdrawn)
        errors = [reply.exception for reply in withdrawn]
        assert all(type(error) is tasker.CancelledError for error in errors)
        assert len({id(error) for error in errors}) == len(errors)  # each reply its own error
        assert {str(error) for error in errors} == {"cancelled before it ran"}
        plain = AsyncResult()  # the same error set on a plain AsyncResult, for comparison
        plain.set_exception(tasker.CancelledError("cancelled before it ran"))
        with pytest.raises(tasker.CancelledError) as expected:
            plain.get()
        for reply, error in zip(withdrawn, errors, strict=True):
            assert reply.exc_info == (tasker.CancelledError, error, None) == (type(error), error, None)
            assert reply.value is None and reply.wait(0) is None
            with pytest.raises(tasker.CancelledError) as raised:
                reply.get()
            assert raised.value is error
            assert frames(raised.value) == frames(expected.value)
        assert all_called.wait(5)
        gevent.idle()  # anything scheduled after the links ran would run now
        assert sorted(calls.values()) == [1] * len(withdrawn)  # each link ran once
        release.set()
        assert manager.stop() is True

    def test_map_interrupted_while_it_waits_cancels_the_reply_it_waited_for(self) -> None:
        # Not only ``break`` at a yield: a kill() or Timeout thrown into the consumer while
        # it waits for the oldest reply leaves that reply to the cleanup too.
        res = Resources()
        manager = manager_with(res, 1)
        started, pulled = Event(), Event()
        contexts: list[tasker.Context] = []
        ran: list[int] = []

        def fn(ctx: tasker.Context, resource: int, item: int) -> int:
            ran.append(item)
            contexts.append(ctx)
            started.set()
            ctx.wait()  # until cancelled
            return item

        def items() -> Iterator[int]:
            yield from range(5)
            pulled.set()

        results = manager.map(fn, items(), max_in_flight=10)
        reader = gevent.spawn(next, results)
        assert started.wait(5) and pulled.wait(5)  # item 0 runs, 1-4 are queued, the reader waits
        reader.kill()
        assert contexts[0].cancelled  # the reply the reader waited for was cancelled too
        assert manager.stats().queued_tasks == 0
        assert manager.stop() is True
        assert ran == [0]
        metrics = manager.metrics()
        assert (metrics.total_tasks_cancelled, metrics.total_tasks_completed) == (4, 1)  # item 0 returned


class TestEarlyExitFreesAsItGoes:
    """The cleanup lets go of each reply as it answers it: no garbage collection runs in the middle."""

    @pytest.mark.parametrize("method", BATCH)
    def test_leaving_with_thousands_in_flight_runs_no_collection(self, method: str) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        started, release = Event(), Event()

        def fn(ctx: tasker.Context, resource: int, item: int) -> int:
            if item == 1:
                started.set()
                release.wait()
            return item

        results = getattr(manager, method)(fn, itertools.count(), max_in_flight=5001)
        assert next(results) == 0
        assert started.wait(5)
        collections: list[int] = []

        def count(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                collections.append(info["generation"])

        gc.collect()
        gc.callbacks.append(count)
        try:
            results.close()  # 4,999 withdrawn; each answer allocates what the reply it frees gives back
        finally:
            gc.callbacks.remove(count)
        assert len(collections) <= 2, collections  # holding them all to the end: 20 or more
        assert manager.stats().queued_tasks == 0
        assert manager.metrics().total_tasks_cancelled == 4999
        release.set()
        assert manager.stop() is True


def spied_with_item_1_blocking() -> tuple[Manager, list[Any], Any, Event, Event]:
    """A one-worker manager whose every reply is kept (in submission order), and an item
    function for the batches in which item 1 blocks until ``release`` (``started`` set)."""
    manager = manager_with(Resources(), 1)
    started, release = Event(), Event()
    replies: list[Any] = []
    submit = manager.submit

    def spy(*args: Any, **kwargs: Any) -> Any:
        replies.append(submit(*args, **kwargs))
        return replies[-1]

    manager.submit = spy  # type: ignore[method-assign]

    def fn(ctx: tasker.Context, resource: int, item: int) -> int:
        if item == 1:
            started.set()
            release.wait()
        return item

    return manager, replies, fn, started, release


def frames(error: BaseException) -> list[tuple[str, str]]:
    """Where a raised error's traceback went, past the test's own frame: (file, function) of each."""
    return [(frame.filename, frame.name) for frame in traceback.extract_tb(error.__traceback__)[1:]]


class TestBadArguments:
    """Bad max_in_flight is a ValueError and a non-callable fn a TypeError, both at the call."""

    @pytest.mark.parametrize("method", BATCH)
    @pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
    def test_bad_max_in_flight(self, method: str, bad: Any) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        source = Counted()
        with pytest.raises(ValueError):
            getattr(manager, method)(lambda ctx, r, i: i, source, max_in_flight=bad)
        assert source.pulled == 0
        assert manager.stop() is True

    @pytest.mark.parametrize("method", BATCH)
    @pytest.mark.parametrize("bad", [None, 5, "fn"])
    def test_non_callable_fn(self, method: str, bad: Any) -> None:
        res = Resources()
        manager = manager_with(res, 1)
        source = Counted()
        with pytest.raises(TypeError):
            getattr(manager, method)(bad, source)
        assert source.pulled == 0
        assert manager.stop() is True
