"""Calls from other OS threads (issue #10, family 8): handed to the manager's thread, every time."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from conftest import manager_greenlets
from gevent._hub_local import get_hub_if_exists
from gevent.event import Event
from helpers import Resources, hold_the_worker

import tasker
from tasker import TaskManager
from tasker._fifo import Fifo

Manager = TaskManager[int, Any]
CALLS = 200


def in_thread(kind: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in another OS thread while this one keeps the gevent loop running; its outcome."""
    hub = gevent.get_hub()
    done = Event()
    box: list[Any] = []

    def body() -> None:
        try:
            if kind == "hub":
                gevent.get_hub()  # a thread that runs gevent itself: its waits are gevent waits
            box.append(("value", fn()))
        except BaseException as exc:
            box.append(("error", exc))
        finally:
            hub.loop.run_callback_threadsafe(done.set)

    if kind in ("threading", "hub"):
        threading.Thread(target=body, daemon=True).start()
    else:
        hub.threadpool.spawn(body)
    assert done.wait(15), "the thread never finished"
    (outcome,) = box
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


def whose_thread(ctx: tasker.Context, resource: int) -> int:
    return threading.get_ident()


@pytest.fixture(params=["threading", "threadpool", "hub"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestFromAnotherThread:
    """Every submission from another thread is answered, and its task runs in the manager's thread."""

    def test_blocking_variants(self, kind: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=4))
        here = threading.get_ident()
        seen = in_thread(kind, lambda: [manager.queue_task(whose_thread) for _ in range(CALLS)])
        assert seen == [here] * CALLS  # not one LoopExit: every call answered
        assert in_thread(kind, lambda: manager.queue_task_with_priority_once(lambda ctx, r: "p")) == "p"
        assert manager.stop() is True
        res.assert_all_destroyed_once()

    def test_async_callback_and_run_task(self, kind: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        called = Event()
        results: list[Any] = []

        def callback(result: Any, error: BaseException | None) -> None:
            results.append((result, threading.get_ident()))
            called.set()

        def calls() -> tuple[Any, ...]:
            reply = manager.queue_task_async(lambda ctx, r: "async")
            manager.queue_task_with_callback(lambda ctx, r: "cb", callback)
            return reply.get(), manager.run_task(lambda ctx, r: "ran"), reply.cancel()

        assert in_thread(kind, calls) == ("async", "ran", False)
        assert called.wait(5)
        assert results == [("cb", threading.get_ident())]  # the callback ran in the manager's thread
        assert manager.stop() is True
        res.assert_all_destroyed_once()

    def test_errors_raise_in_the_calling_thread(self, kind: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        with pytest.raises(TypeError, match="priority must be a bool"):
            in_thread(kind, lambda: manager.submit(whose_thread, priority="yes"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="boom"):
            in_thread(kind, lambda: manager.queue_task(lambda ctx, r: (_ for _ in ()).throw(ValueError("boom"))))
        with pytest.raises(RuntimeError, match="thread that made the manager"):
            in_thread(kind, lambda: manager.map(lambda ctx, r, i: i, [1]))
        manager.stop()
        with pytest.raises(tasker.ManagerStoppedError):
            in_thread(kind, lambda: manager.submit(whose_thread))
        res.assert_all_destroyed_once()

    def test_stop_and_kill(self, kind: str) -> None:
        for shutdown in ("stop", "kill"):
            res = Resources()
            manager: Manager = TaskManager(res.config(worker_count=2))
            replies = [manager.submit(whose_thread) for _ in range(10)]
            in_thread(kind, getattr(manager, shutdown))
            assert all(r.ready() for r in replies)
            assert manager._shutdown.finished.is_set()
            res.assert_all_destroyed_once()
            assert manager_greenlets(manager) == []

    def test_stats_and_metrics_are_read_in_the_managers_thread(self, kind: str) -> None:
        """Regression: read in the calling thread, they raced the actors: metrics() folded
        the collector's buffers while workers appended to them (IndexError in a worker),
        stats() iterated the workers while the scaler changed them."""
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        readers: list[int] = []
        collector = manager._core.collector
        real = collector.metrics

        def metrics() -> tasker.TaskMetrics:
            readers.append(threading.get_ident())
            return real()

        collector.metrics = metrics  # type: ignore[method-assign]

        class Workers(dict[Any, Any]):
            def values(self) -> Any:
                readers.append(threading.get_ident())
                return super().values()

        manager._supervisor.workers = Workers(manager._supervisor.workers)
        assert manager.queue_task(whose_thread) == threading.get_ident()
        stats = in_thread(kind, manager.stats)
        assert (stats.base_workers, stats.active_workers) == (2, 2)
        assert in_thread(kind, manager.metrics).total_tasks_completed == 1
        assert readers == [threading.get_ident()] * 2
        assert manager.stop() is True

    def test_a_finished_managers_numbers_are_read_without_its_thread(self) -> None:
        """A scrape thread reading a stopped manager does not wait for the manager's thread
        to run its loop (here it blocks in a plain join): those numbers no longer change."""
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        assert manager.queue_task(whose_thread) == threading.get_ident()
        assert manager.stop() is True
        box: list[Any] = []
        reader = threading.Thread(target=lambda: box.extend([manager.stats(), manager.metrics()]), daemon=True)
        reader.start()
        reader.join(5)  # not a gevent wait: this thread's loop does not run meanwhile
        stats, metrics = box
        assert stats.active_workers == 0 and metrics.total_tasks_completed == 1

    def test_a_batch_cleanup_in_another_thread(self, kind: str) -> None:
        # A generator of map()/imap_unordered() closed (or collected) in another thread:
        # its cleanup, Core.cancel_all, is handed to the manager's thread in one call.
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        started, release = Event(), Event()

        def gate(ctx: tasker.Context, resource: int) -> str:
            started.set()
            release.wait()
            return "ran"

        running = manager.submit(gate)
        assert started.wait(5)
        queued = [manager.submit(whose_thread) for _ in range(10)]
        in_thread(kind, lambda: manager._core.cancel_all(deque([running, *queued])))
        assert all(isinstance(reply.exception, tasker.CancelledError) for reply in queued)
        assert running._ctx is not None and running._ctx.cancelled  # running: its context cancelled
        release.set()
        assert running.get() == "ran"
        assert manager.metrics().total_tasks_cancelled == 10
        assert manager.stop() is True
        res.assert_all_destroyed_once()


class TestAThreadWithoutAHub:
    """A thread that has no gevent hub waits on a native lock and gets no hub: a hub that
    waited on another thread's reply is never freed, and its loop's file descriptors with
    it, so a thread per request would run out of them."""

    def test_every_wait_works_and_makes_no_hub(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        release = Event()

        def calls() -> list[Any]:
            held = manager.submit(lambda ctx, r: release.wait(5) and "late")
            seen: list[Any] = []
            try:
                held.get(timeout=0.01)
            except gevent.Timeout as exc:
                seen.append(type(exc))
            seen.append(held.wait(0.01))
            manager._core.hub.loop.run_callback_threadsafe(release.set)
            seen += [held.get(), held.wait(), manager.queue_task(lambda ctx, r: "queued")]
            seen += [manager.run_task(lambda ctx, r: "run"), get_hub_if_exists()]
            return seen

        assert in_thread("threading", calls) == [gevent.Timeout, None, "late", "late", "queued", "run", None]
        assert manager.stop() is True

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
    def test_threads_that_come_and_go_leave_no_file_descriptors(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            assert in_thread("threading", lambda: manager.queue_task(whose_thread)) == threading.get_ident()
        assert len(os.listdir("/proc/self/fd")) - before < 10  # two a thread before
        assert manager.stop() is True


class Caller:
    """The calling thread's greenlet and hub, so that the manager's thread can throw an
    interrupt into its wait at a chosen moment (as its own gevent.Timeout would land)."""

    def __init__(self) -> None:
        self.box: list[tuple[Any, Any]] = []
        self.timeout = gevent.Timeout()  # never started: only thrown

    def here(self) -> None:
        """Called in the calling thread, before the call it will give up on."""
        self.box.append((gevent.getcurrent(), gevent.get_hub()))

    def give_up(self) -> None:
        """Called in the manager's thread: the calling thread's wait raises ``timeout``."""
        ((greenlet, hub),) = self.box
        hub.loop.run_callback_threadsafe(greenlet.throw, self.timeout)


class TestTheCallingThreadGivesUp:
    """A calling thread that stops waiting (an exception thrown into its wait) withdraws
    its call in the manager's thread, as that exception would have there: no task runs
    for a caller that gave up, and no reply is left that nobody holds.

    Before, the handed-over call went on: a submission waiting for room was made later
    and its task ran, a run_task task ran on (and stop() waited for it)."""

    def test_a_run_task_is_interrupted(self, kind: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        caller = Caller()
        interrupted = Event()
        seen: list[BaseException] = []

        def task(ctx: tasker.Context, resource: int) -> None:
            caller.give_up()
            try:
                Event().wait()  # until the withdrawal interrupts it
            except BaseException as exc:
                seen.append(exc)
                interrupted.set()
                raise

        def call() -> None:
            caller.here()
            manager.run_task(task)

        with pytest.raises(gevent.Timeout) as info:
            in_thread(kind, call)
        assert info.value is caller.timeout
        assert interrupted.wait(5)
        assert [type(exc) for exc in seen] == [gevent.GreenletExit]
        assert manager.stop(5) is True  # no run_task call left to wait for
        assert manager.metrics().total_tasks_cancelled == 1
        res.assert_all_destroyed_once()

    def test_a_submission_waiting_for_room_is_not_made(self, kind: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, max_queue_size=1))
        gate, running = hold_the_worker(manager)
        queued = manager.submit(whose_thread)  # the main lane is full
        caller = Caller()
        ran: list[str] = []
        waiting = Event()

        class Waiters(Fifo):  # the lane's FIFO of submitters waiting for room, which says when one enters
            def append(self, msg: Any) -> None:
                super().append(msg)
                waiting.set()

        manager._mailbox.main.waiters = Waiters()  # empty, like the one it replaces

        def watch() -> None:
            waiting.wait()  # the thread's submission waits for room
            caller.give_up()

        def call() -> None:
            caller.here()
            manager.submit(lambda ctx, r: ran.append("ran"))

        watcher = gevent.spawn(watch)
        with pytest.raises(gevent.Timeout):
            in_thread(kind, call)
        watcher.get(timeout=5)
        gevent.idle()  # the withdrawal, handed to this thread, runs
        gate.release.set()
        assert running.get(timeout=5) == "gate" and queued.get(timeout=5) == threading.get_ident()
        # Served in order after anything submitted for the thread: the lane is FIFO, and so are its waiters.
        assert manager.queue_task(lambda ctx, r: "after") == "after"
        assert ran == []
        assert manager.stop(5) is True
        assert manager.metrics().total_tasks_completed == 3
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("how", ["submit", "callback"])
    def test_a_submission_made_before_it_gave_up_is_cancelled(self, kind: str, how: str) -> None:
        caller = Caller()

        class GivingUp(tasker.Collector):
            def record_arrival(self) -> None:  # in the manager's thread, inside the handed-over submit
                super().record_arrival()
                if caller.box:
                    caller.give_up()  # lands before the submission's outcome reaches the thread

        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=GivingUp()))
        gate, running = hold_the_worker(manager)  # the thread's submission stays queued
        ran: list[str] = []
        errors: list[BaseException | None] = []
        called = Event()

        def callback(result: Any, error: BaseException | None) -> None:
            errors.append(error)
            called.set()

        def call() -> None:
            caller.here()
            if how == "submit":
                manager.submit(lambda ctx, r: ran.append("ran"))
            else:
                manager.queue_task_with_callback(lambda ctx, r: ran.append("ran"), callback)

        with pytest.raises(gevent.Timeout):
            in_thread(kind, call)
        gate.release.set()
        assert running.get(timeout=5) == "gate"
        if how == "callback":  # its one reply: the withdrawal
            assert called.wait(5)
            assert [type(e) for e in errors] == [tasker.CancelledError]
        assert manager.stop(5) is True
        assert ran == []
        assert manager.metrics().total_tasks_cancelled == 1
        res.assert_all_destroyed_once()
