"""``TaskManager``: the twelve seed variants, replies, lifecycle (stop, kill, parent context), stats and metrics."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import gevent
import pytest
from conftest import manager_greenlets
from gevent.event import AsyncResult, Event
from helpers import (
    BrokenCollector,
    Gate,
    Healthy,
    Manager,
    RecordingLogger,
    Resources,
    SlowClose,
    Unhealthy,
    catching,
    hold_the_worker,
    one_worker,
    raising,
    returning,
    the_resource,
)

import tasker
from tasker import ManagerStoppedError, TaskKilledError, TaskManager
from tasker.testing import FakeClock

# (seed name, priority, once) for the four blocking names; each has _with_callback and _async forms.
SEEDS = [
    ("queue_task", False, False),
    ("queue_task_with_priority", True, False),
    ("queue_task_once", False, True),
    ("queue_task_with_priority_once", True, True),
]
SUFFIX = {"blocking": "", "callback": "_with_callback", "async": "_async"}
VARIANTS = [(seed + SUFFIX[kind], kind, priority, once) for seed, priority, once in SEEDS for kind in SUFFIX]
VARIANT_IDS = [name for name, *_ in VARIANTS]
CALLBACK_NAMES = [name for name, kind, *_ in VARIANTS if kind == "callback"]


# -- recorders ----------------------------------------------------------------------


class RaisingLogger:
    """A Logger whose every method raises."""

    def _boom(self, msg: str, *args: Any) -> None:
        raise RuntimeError("logger is broken")

    debug = info = warning = error = _boom


class CountingCollector(tasker.Collector):
    """The default collector, also counting each record_* call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()

    def record_arrival(self) -> None:
        self.calls["arrival"] += 1
        super().record_arrival()

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.calls["completion"] += 1
        super().record_completion(stamps)

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.calls["failure"] += 1
        super().record_failure(stamps)

    def record_retry(self) -> None:
        self.calls["retry"] += 1
        super().record_retry()

    def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.calls["cancellation"] += 1
        super().record_cancellation(stamps)


@attrs.define
class CallbackRecorder:
    """A callback that records each call and the greenlet it ran in."""

    calls: list[tuple[Any, BaseException | None, Any]] = attrs.field(factory=list)
    called: Event = attrs.field(factory=Event)

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.calls.append((result, error, gevent.getcurrent()))
        self.called.set()


def submit_by(manager: Manager, name: str, kind: str, task: Any) -> tuple[Any, CallbackRecorder | None]:
    """Submit through one variant without waiting; returns a greenlet/reply and the callback."""
    method = getattr(manager, name)
    if kind == "blocking":
        return gevent.spawn(catching, method, task), None
    if kind == "async":
        return method(task), None
    recorder = CallbackRecorder()
    assert method(task, recorder) is None
    return None, recorder


# -- tests --------------------------------------------------------------------------


class TestVariants:
    """Each of the twelve seed variants delivers the value or the very exception, in its own way."""

    @pytest.mark.parametrize(("name", "kind", "priority", "once"), VARIANTS, ids=VARIANT_IDS)
    def test_value(self, name: str, kind: str, priority: bool, once: bool) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        workers: list[Any] = []

        def task(ctx: tasker.Context, resource: int) -> tuple[str, int]:
            workers.append(gevent.getcurrent())
            return ("value", resource)

        method = getattr(manager, name)
        if kind == "blocking":
            assert method(task) == ("value", 1)
        elif kind == "async":
            reply = method(task)
            assert isinstance(reply, AsyncResult)
            assert isinstance(reply, tasker.TaskResult)
            assert reply.get() == ("value", 1)
            assert reply.successful()
        else:
            recorder = CallbackRecorder()
            assert method(task, recorder) is None
            recorder.called.wait()
        assert manager.stop() is True
        assert len(workers) == 1
        if kind == "callback":
            assert len(recorder.calls) == 1
            result, error, greenlet = recorder.calls[0]
            assert (result, error) == (("value", 1), None)
            assert greenlet is not gevent.getcurrent()
            assert greenlet is not workers[0]
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize(("name", "kind", "priority", "once"), VARIANTS, ids=VARIANT_IDS)
    def test_healthy_error_is_the_same_object(self, name: str, kind: str, priority: bool, once: bool) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        error = Healthy("task failed")
        method = getattr(manager, name)
        if kind == "blocking":
            with pytest.raises(Healthy) as info:
                method(raising(error))
            assert info.value is error
        elif kind == "async":
            reply = method(raising(error))
            assert isinstance(reply, tasker.TaskResult)
            reply.wait()
            assert reply.exception is error
            with pytest.raises(Healthy) as info:
                reply.get()
            assert info.value is error
        else:
            recorder = CallbackRecorder()
            method(raising(error), recorder)
            recorder.called.wait()
        # The worker survived the healthy error: same resource serves the next task.
        assert manager.queue_task(lambda ctx, resource: resource) == 1
        assert manager.stop() is True
        if kind == "callback":
            assert len(recorder.calls) == 1
            result, exc, greenlet = recorder.calls[0]
            assert result is None
            assert exc is error
            assert greenlet is not gevent.getcurrent()
        assert res.created == [1]

    @pytest.mark.parametrize(("name", "kind", "priority", "once"), VARIANTS, ids=VARIANT_IDS)
    def test_lane_and_once_flag(self, name: str, kind: str, priority: bool, once: bool) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res, max_retries=2))
        gate, _ = hold_the_worker(manager)
        attempts: list[int] = []

        def unhealthy(ctx: tasker.Context, resource: int) -> None:
            attempts.append(resource)
            raise Unhealthy("bad resource")

        handle, recorder = submit_by(manager, name, kind, unhealthy)
        gevent.idle()  # a blocking caller submits
        stats = manager.stats()
        assert (stats.priority_tasks, stats.queued_tasks) == ((1, 0) if priority else (0, 1))
        gate.release.set()
        if kind == "blocking":
            error = handle.get()  # catching() returns the exception
        elif kind == "async":
            handle.wait()
            error = handle.exception
        else:
            assert recorder is not None
            recorder.called.wait()
            error = recorder.calls[0][1]
        if once:
            assert len(attempts) == 1
            assert isinstance(error, Unhealthy)
        else:
            assert len(attempts) == 3  # first delivery + max_retries redeliveries
            assert isinstance(error, tasker.RetriesExhaustedError)
            assert error.attempts == 3
        assert len(set(attempts)) == len(attempts)  # each attempt on a fresh resource
        assert manager.stop() is True
        res.assert_all_destroyed_once()


class TestCallbacks:
    """A callback runs once in its own greenlet; if it raises, Config.logger hears of it and work goes on."""

    def test_each_callback_has_its_own_greenlet(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        recorders = [CallbackRecorder() for _ in range(3)]
        for i, recorder in enumerate(recorders):
            manager.queue_task_with_callback(returning(i), recorder)
        for recorder in recorders:
            recorder.called.wait()
        assert manager.stop() is True
        assert [r.calls[0][0] for r in recorders] == [0, 1, 2]
        greenlets = {id(r.calls[0][2]) for r in recorders}
        assert len(greenlets) == 3
        assert all(len(r.calls) == 1 for r in recorders)

    def test_raising_callback_is_logged_and_manager_keeps_working(self) -> None:
        res = Resources()
        logger = RecordingLogger()
        manager: Manager = TaskManager(one_worker(res, logger=logger))
        boom = ValueError("callback is broken")
        calls: list[Any] = []

        def callback(result: Any, error: BaseException | None) -> None:
            calls.append((result, error))
            raise boom

        manager.queue_task_with_callback(returning("v"), callback)
        logger.errored.wait()
        assert calls == [("v", None)]
        assert logger.errors_with(boom), logger.calls
        assert manager.queue_task(returning("still works")) == "still works"
        recorder = CallbackRecorder()
        manager.queue_task_with_priority_with_callback(returning("again"), recorder)
        recorder.called.wait()
        assert manager.stop() is True
        assert recorder.calls[0][:2] == ("again", None)
        assert calls == [("v", None)]

    @pytest.mark.parametrize("end", ["stop", "kill"])
    def test_callback_may_end_the_manager(self, end: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        done = Event()
        ended: list[Any] = []
        where: list[Any] = []

        def callback(result: Any, error: BaseException | None) -> None:
            where.append(gevent.getcurrent())
            ended.append(getattr(manager, end)())
            done.set()

        manager.queue_task_with_callback(returning(1), callback)
        done.wait()  # regression: the shutdown used to wait for this very callback, forever
        assert ended == [True if end == "stop" else None]
        assert len(where) == 1
        res.assert_all_destroyed_once()

    def test_raising_logger_and_collector_do_not_break_workers(self) -> None:
        res = Resources()
        flaky_calls: list[int] = []

        def flaky(ctx: tasker.Context, resource: int) -> str:
            flaky_calls.append(resource)
            if len(flaky_calls) == 1:
                raise Unhealthy("first resource is bad")  # redelivered: record_retry raises
            return "recovered"

        def bad_callback(result: Any, error: BaseException | None) -> None:
            raise ValueError("callback")  # logged through the raising logger

        manager: Manager = TaskManager(
            res.config(worker_count=2, max_worker_count=2, logger=RaisingLogger(), collector=BrokenCollector())
        )
        assert manager.queue_task(returning(1)) == 1
        error = Healthy("healthy")
        with pytest.raises(Healthy) as info:
            manager.queue_task(raising(error))
        assert info.value is error
        assert manager.queue_task(flaky) == "recovered"
        manager.queue_task_with_callback(returning(2), bad_callback)
        recorder = CallbackRecorder()
        manager.queue_task_once_with_callback(returning(3), recorder)
        recorder.called.wait()
        replies = [manager.queue_task_with_priority_async(returning(i)) for i in range(10)]
        assert [r.get() for r in replies] == list(range(10))
        assert manager.stop() is True
        assert recorder.calls[0][:2] == (3, None)
        assert len(flaky_calls) == 2
        res.assert_all_destroyed_once()


class TestTaskerProtocol:
    """Objects with execute(ctx, resource) are tasks; they get a live Context derived from the manager's."""

    @attrs.define
    class Fetch:
        seen: list[tuple[tasker.Context, int]] = attrs.field(factory=list)

        def execute(self, ctx: tasker.Context, resource: int) -> tuple[str, int]:
            self.seen.append((ctx, resource))
            return ("fetched", resource)

    @attrs.define
    class WaitForCancel:
        started: Event = attrs.field(factory=Event)

        def execute(self, ctx: tasker.Context, resource: int) -> bool:
            self.started.set()
            ctx.wait()
            return ctx.cancelled

    def test_execute_objects_in_every_form(self) -> None:
        res = Resources()
        root = tasker.Context()
        manager: Manager = TaskManager(one_worker(res, ctx=root))
        fetch = self.Fetch()
        assert isinstance(fetch, tasker.Tasker)
        assert manager.queue_task(fetch) == ("fetched", 1)
        assert manager.queue_task_with_priority_async(fetch).get() == ("fetched", 1)
        assert manager.submit(fetch, once=True).get() == ("fetched", 1)
        recorder = CallbackRecorder()
        manager.queue_task_once_with_callback(fetch, recorder)
        recorder.called.wait()
        assert recorder.calls[0][:2] == (("fetched", 1), None)
        assert manager.run_task(fetch) == ("fetched", 2)  # no pool: a temporary resource
        assert res.destroyed == [2]
        assert len(fetch.seen) == 5
        contexts = [ctx for ctx, _ in fetch.seen]
        assert all(isinstance(ctx, tasker.Context) and not ctx.cancelled for ctx in contexts)
        assert root not in contexts
        assert len({id(ctx) for ctx in contexts}) == 5  # a fresh context per task
        root.cancel()
        assert all(ctx.cancelled for ctx in contexts)  # derived from the manager's (from Config.ctx)
        assert manager.stop() is True
        res.assert_all_destroyed_once()

    def test_context_is_live_until_the_manager_context_is_cancelled(self) -> None:
        res = Resources()
        root = tasker.Context()
        manager: Manager = TaskManager(one_worker(res, ctx=root))
        waiter = self.WaitForCancel()
        reply = manager.queue_task_async(waiter)
        waiter.started.wait()
        gevent.idle()
        assert not reply.ready()  # the context is live: ctx.wait() blocks
        root.cancel()
        assert reply.get() is True
        assert manager.stop() is True


class TestNotATask:
    """A non-callable task or callback is a TypeError from the submitting call, and nothing is queued."""

    class NoExecute:
        execute = 5

    @pytest.mark.parametrize("bad", [42, None, "task", NoExecute()], ids=["int", "None", "str", "execute-attr"])
    def test_bad_task(self, bad: Any) -> None:
        res = Resources()
        collector = CountingCollector()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gate, _ = hold_the_worker(manager)
        before = manager.stats()
        arrivals = collector.calls["arrival"]
        recorder = CallbackRecorder()
        for name, kind, _, _ in VARIANTS:
            args = (bad, recorder) if kind == "callback" else (bad,)
            with pytest.raises(TypeError):
                getattr(manager, name)(*args)
        with pytest.raises(TypeError):
            manager.submit(bad)
        with pytest.raises(TypeError):
            manager.submit(bad, priority=True, once=True)
        with pytest.raises(TypeError):
            manager.run_task(bad)
        assert manager.stats() == before
        assert collector.calls["arrival"] == arrivals
        gate.release.set()
        assert manager.stop() is True
        assert recorder.calls == []
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("name", CALLBACK_NAMES)
    @pytest.mark.parametrize("bad", [None, 7, "cb"])
    def test_bad_callback(self, name: str, bad: Any) -> None:
        res = Resources()
        collector = CountingCollector()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gate, _ = hold_the_worker(manager)
        before = manager.stats()
        ran: list[int] = []
        with pytest.raises(TypeError):
            getattr(manager, name)(lambda ctx, resource: ran.append(1), bad)
        assert manager.stats() == before
        assert collector.calls["arrival"] == 1  # the gate only
        gate.release.set()
        assert manager.stop() is True
        assert ran == []


class TestConcurrency:
    """Many greenlets submitting at once each get exactly one reply; stats() tells what waits and runs."""

    def test_one_reply_per_submission(self) -> None:
        res = Resources()
        collector = CountingCollector()
        manager: Manager = TaskManager(res.config(worker_count=4, collector=collector))
        runs: Counter[int] = Counter()
        notified: Counter[int] = Counter()
        n = 300

        def make(i: int) -> Callable[[tasker.Context, int], int]:
            def task(ctx: tasker.Context, resource: int) -> int:
                runs[i] += 1
                gevent.sleep(0)  # interleave with the submitters
                return i

            return task

        def client(i: int) -> int:
            form = i % 4
            if form == 0:
                return manager.queue_task(make(i))  # type: ignore[no-any-return]
            if form == 1:
                return manager.queue_task_with_priority(make(i))  # type: ignore[no-any-return]
            if form == 2:
                reply = manager.queue_task_once_async(make(i))
                reply.rawlink(lambda r: notified.update([i]))
                return reply.get()  # type: ignore[no-any-return]
            done = AsyncResult()
            manager.queue_task_with_priority_once_with_callback(make(i), lambda v, e: done.set(v))
            return done.get()  # type: ignore[no-any-return]

        clients = [gevent.spawn(client, i) for i in range(n)]
        gevent.joinall(clients, raise_error=True)
        assert [c.value for c in clients] == list(range(n))
        assert manager.stop() is True
        assert runs == Counter(range(n))
        assert notified == Counter(i for i in range(n) if i % 4 == 2)
        assert collector.calls["arrival"] == n
        assert collector.calls["completion"] == n
        assert collector.calls["failure"] == 0
        res.assert_all_destroyed_once()

    def test_stats_while_a_gate_holds_the_only_worker(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        assert manager.stats() == tasker.TaskStats(
            base_workers=1, active_workers=1, burst_workers=0, queued_tasks=0, priority_tasks=0, available_resources=1
        )
        gate, held = hold_the_worker(manager)
        main = [manager.queue_task_async(returning(i)) for i in range(3)]
        prio = [manager.queue_task_with_priority_async(returning(i)) for i in range(2)]
        callers = [gevent.spawn(manager.queue_task_once, returning("blocked")) for _ in range(2)]
        gevent.idle()
        stats = manager.stats()
        assert (stats.busy_workers, stats.queued_tasks, stats.priority_tasks) == (1, 5, 2)
        assert (stats.base_workers, stats.burst_workers, stats.available_resources) == (1, 0, 1)
        main[1].cancel()
        assert manager.stats().queued_tasks == 4
        gate.release.set()
        assert held.get() == "gate"
        assert [r.get() for r in prio] == [0, 1]
        assert [main[0].get(), main[2].get()] == [0, 2]
        assert [c.get() for c in callers] == ["blocked", "blocked"]
        stats = manager.stats()
        assert (stats.busy_workers, stats.queued_tasks, stats.priority_tasks) == (0, 0, 0)
        assert manager.stop() is True

    def test_busy_workers_counts_running_tasks_and_active_workers_all_of_them(self) -> None:
        # Seed, TaskStats: "ActiveWorkers int32 // Total number of currently active workers
        # (base + burst)." busy_workers is the extension: workers running a task now.
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=3, max_worker_count=3))
        assert (manager.stats().active_workers, manager.stats().busy_workers) == (3, 0)
        gates = [Gate(value=i) for i in range(2)]
        replies = [manager.queue_task_async(g) for g in gates]
        for gate in gates:
            gate.started.wait()
        assert (manager.stats().active_workers, manager.stats().busy_workers) == (3, 2)
        gates[0].release.set()
        assert replies[0].get() == 0
        assert (manager.stats().active_workers, manager.stats().busy_workers) == (3, 1)
        gates[1].release.set()
        assert replies[1].get() == 1
        assert (manager.stats().active_workers, manager.stats().busy_workers) == (3, 0)
        assert manager.stop() is True


def all_submissions(manager: Manager, recorder: CallbackRecorder) -> list[tuple[str, BaseException | None]]:
    """Try every way to submit; what each one raised (None if it did not)."""
    outcomes: list[tuple[str, BaseException | None]] = []
    task = returning("late")
    calls: list[tuple[str, Callable[[], Any]]] = []
    for name, kind, _, _ in VARIANTS:
        args = (task, recorder) if kind == "callback" else (task,)
        calls.append((name, functools.partial(getattr(manager, name), *args)))
    calls += [
        ("submit", lambda: manager.submit(task)),
        ("submit(priority)", lambda: manager.submit(task, priority=True, once=True)),
        ("run_task", lambda: manager.run_task(task)),
    ]
    for name, call in calls:
        try:
            call()
        except BaseException as exc:
            outcomes.append((name, exc))
        else:
            outcomes.append((name, None))
    return outcomes


def assert_ended(manager: Manager, res: Resources) -> None:
    """Ended for good: stop(), kill() and submissions raise, nothing runs, every resource was destroyed once."""
    with pytest.raises(ManagerStoppedError):
        manager.kill()
    with pytest.raises(ManagerStoppedError):
        manager.stop()
    with pytest.raises(ManagerStoppedError):
        manager.queue_task_async(returning(1))
    assert manager_greenlets(manager) == []
    res.assert_all_destroyed_once()


class TestStop:
    """stop() drains both lanes (priority first) with live contexts, waits for running tasks, and rejects new work."""

    def test_drains_priority_first_with_live_contexts(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        gate, held = hold_the_worker(manager)
        order: list[str] = []

        def tagged(tag: str) -> Callable[[tasker.Context, int], str]:
            def task(ctx: tasker.Context, resource: int) -> str:
                order.append(f"{tag}:{'cancelled' if ctx.cancelled else 'live'}")
                return tag

            return task

        replies = [
            manager.queue_task_async(tagged("m1")),
            manager.queue_task_with_priority_async(tagged("p1")),
            manager.queue_task_once_async(tagged("m2")),
            manager.queue_task_with_priority_once_async(tagged("p2")),
        ]
        recorder = CallbackRecorder()
        manager.queue_task_with_callback(tagged("m3"), recorder)
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        assert not stopper.ready()  # waits for the running task
        assert not held.ready()
        late = CallbackRecorder()
        submitter = gevent.spawn(all_submissions, manager, late)
        rejected = submitter.get()
        assert [name for name, _ in rejected] == [*VARIANT_IDS, "submit", "submit(priority)", "run_task"]
        for name, exc in rejected:
            assert isinstance(exc, ManagerStoppedError), (name, exc)
        assert not stopper.ready()
        gate.release.set()
        assert stopper.get() is True
        assert held.get() == "gate"
        assert [r.get() for r in replies] == ["m1", "p1", "m2", "p2"]
        assert order == ["p1:live", "p2:live", "m1:live", "m2:live", "m3:live"]
        assert [c[:2] for c in recorder.calls] == [("m3", None)]
        assert late.calls == []
        res.assert_all_destroyed_once()

    def test_second_stop_raises(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config())
        assert manager.stop() is True
        with pytest.raises(ManagerStoppedError):
            manager.stop()
        with pytest.raises(RuntimeError):  # ManagerStoppedError is a RuntimeError too
            manager.stop()

    def test_submit_after_stop_raises_everywhere(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config())
        assert manager.stop() is True
        recorder = CallbackRecorder()
        for name, exc in all_submissions(manager, recorder):
            assert isinstance(exc, ManagerStoppedError), (name, exc)
        gevent.idle()
        assert recorder.calls == []

    def test_blocked_caller_is_answered_by_the_drain(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        gate, _ = hold_the_worker(manager)
        caller = gevent.spawn(manager.queue_task_with_priority, returning("answered"))
        gevent.idle()
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        gate.release.set()
        assert caller.get() == "answered"
        assert stopper.get() is True

    def test_a_stop_whose_caller_is_killed_keeps_its_timeout(self) -> None:
        """Regression: our own greenlet finished the shutdown with no timeout, so a task that
        never ended kept its caller, its resource and the manager forever."""
        res = Resources()
        clock = FakeClock()
        manager: Manager = TaskManager(one_worker(res, clock=clock, kill_timeout=0.5))
        _, held = hold_the_worker(manager)  # never released: only kill() ends it
        stopper = gevent.spawn(manager.stop, timeout=1.0)
        gevent.idle()
        clock.advance(0.4)
        stopper.kill()  # its caller's greenlet ends halfway, 0.6 s before the timeout
        assert not manager._shutdown.finished.is_set()
        clock.advance(0.6 - 1e-6)
        assert not held.ready()  # not escalated before the timeout
        clock.advance(2e-6)
        assert isinstance(held.exception, TaskKilledError)
        assert manager._shutdown.finished.wait(5)
        res.assert_all_destroyed_once()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
class TestForkedChild:
    """A child forked after the manager was made holds copies of its resources (the same
    sockets) and actors: there every call refuses with ManagerStoppedError, and the
    parent's manager is untouched. Before, the child's copy served and destroyed them."""

    def test_every_call_refuses_in_the_child(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        calls: list[Callable[[], Any]] = [
            lambda: manager.submit(returning(1)),
            lambda: manager.queue_task(returning(1)),
            lambda: manager.queue_task_with_callback(returning(1), lambda result, error: None),
            lambda: manager.run_task(returning(1)),
            manager.stop,
            manager.kill,
        ]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave at once, whatever happens
            try:
                said = []
                for call in calls:
                    try:
                        call()
                        said.append("accepted")
                    except ManagerStoppedError as exc:
                        said.append("refused" if f"process {os.getppid()}" in str(exc) else repr(exc))
                os.write(write, ",".join(said).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as child:
            assert child.read() == ",".join(["refused"] * len(calls))
        assert manager.queue_task(the_resource) == 1
        assert manager.stop() is True
        res.assert_all_destroyed_once()


class TestKill:
    """kill() fails queued messages, interrupts running tasks, and escalates a stop() in progress."""

    def test_kill_fails_queued_and_interrupts_running(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2, max_worker_count=2))
        gates = [Gate(), Gate()]
        contexts: list[tasker.Context] = []
        finished: list[Gate] = []

        def gated(gate: Gate) -> Callable[[tasker.Context, int], Any]:
            def task(ctx: tasker.Context, resource: int) -> Any:
                contexts.append(ctx)
                gate(ctx, resource)
                finished.append(gate)
                return "finished"

            return task

        running = [manager.queue_task_async(gated(g)) for g in gates]
        for g in gates:
            g.started.wait()
        ran: list[int] = []
        queued = [manager.queue_task_async(lambda ctx, r: ran.append(1)) for _ in range(2)]
        queued.append(manager.queue_task_with_priority_once_async(lambda ctx, r: ran.append(2)))
        caller = gevent.spawn(catching, manager.queue_task, lambda ctx, r: ran.append(3))
        recorder = CallbackRecorder()
        manager.queue_task_with_priority_with_callback(lambda ctx, r: ran.append(4), recorder)
        gevent.idle()
        assert manager.stats().queued_tasks + manager.stats().priority_tasks == 5
        manager.kill()
        for reply in running + queued:
            assert reply.ready()
            assert isinstance(reply.exception, TaskKilledError)
        assert isinstance(caller.get(), TaskKilledError)
        recorder.called.wait()
        assert len(recorder.calls) == 1
        assert recorder.calls[0][0] is None
        assert isinstance(recorder.calls[0][1], TaskKilledError)
        assert len(contexts) == 2 and all(ctx.cancelled for ctx in contexts)
        for g in gates:
            g.release.set()
        gevent.idle()
        assert finished == []  # interrupted: never got past the gate
        assert ran == []
        assert_ended(manager, res)

    def test_kill_escalates_a_blocked_stop(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        _, held = hold_the_worker(manager)
        queued = [manager.queue_task_async(returning(i)) for i in range(3)]
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        assert not stopper.ready()
        manager.kill()
        assert stopper.get() is False
        assert isinstance(held.exception, TaskKilledError)
        assert all(isinstance(r.exception, TaskKilledError) for r in queued)
        assert_ended(manager, res)

    def test_kill_from_inside_a_task(self) -> None:
        """Regression: kill() used to kill its own caller's worker and never finish tearing down."""
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2, max_worker_count=2, resource_pool_size=1))
        _, other = hold_the_worker(manager)
        after: list[str] = []

        def fatal(ctx: tasker.Context, resource: int) -> str:
            manager.kill()
            after.append("kill() returned into the task")
            return "own value"

        reply = manager.queue_task_async(fatal)
        queued = manager.queue_task_async(returning("never"))
        reply.wait()
        gevent.idle()
        assert reply.get() == "own value"  # kill() does not interrupt its own caller
        assert after == ["kill() returned into the task"]
        assert isinstance(other.exception, TaskKilledError)
        assert isinstance(queued.exception, TaskKilledError)
        assert_ended(manager, res)

    @pytest.mark.parametrize("where", ["parked", "handed a message"])
    def test_kill_never_interrupts_a_workers_on_destroy(self, where: str) -> None:
        """Regression: the wake-up that closing the mailbox (or a hand-over) scheduled took the
        worker into on_destroy, and kill()'s GreenletExit, scheduled after it, landed there."""
        res = SlowClose()
        manager: Manager = TaskManager(one_worker(res))
        gevent.idle()  # the worker parks
        reply = manager.submit(returning(1)) if where == "handed a message" else None
        manager.kill()
        assert res.interrupted == []
        assert res.destroyed == [1]
        if reply is not None:
            assert isinstance(reply.exception, TaskKilledError)
        assert_ended(manager, res)

    def test_stop_from_inside_a_task_raises_instead_of_deadlocking(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))

        def stopping(ctx: tasker.Context, resource: int) -> BaseException | None:
            try:
                manager.stop()
            except RuntimeError as exc:
                return exc
            return None

        error = manager.queue_task(stopping)
        assert isinstance(error, RuntimeError)
        assert manager.queue_task(returning("still running")) == "still running"
        assert manager.stop() is True

    def test_kill_after_finished_stop_raises(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config())
        assert manager.stop() is True
        assert_ended(manager, res)


class TestParentContext:
    """Cancelling Config.ctx starts a graceful stop: queued work runs with cancelled contexts, new work is refused."""

    def test_graceful_stop_on_parent_cancel(self) -> None:
        res = Resources()
        root = tasker.Context()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, ctx=root))
        gate, held = hold_the_worker(manager)
        seen: list[bool] = []

        def observe(ctx: tasker.Context, resource: int) -> int:
            seen.append(ctx.cancelled)
            return len(seen)

        queued = [manager.queue_task_async(observe), manager.queue_task_with_priority_async(observe)]
        root.cancel()
        gevent.idle()
        recorder = CallbackRecorder()
        for name, exc in all_submissions(manager, recorder):
            assert isinstance(exc, ManagerStoppedError), (name, exc)
        stopper = gevent.spawn(manager.stop)  # joins the shutdown already under way
        gevent.idle()
        assert not stopper.ready()
        gate.release.set()
        assert stopper.get() is True
        assert held.get() == "gate"
        assert sorted(r.get() for r in queued) == [1, 2]
        assert seen == [True, True]
        assert manager_greenlets(manager) == []
        assert recorder.calls == []
        res.assert_all_destroyed_once()

    def test_stop_after_the_shutdown_finished(self) -> None:
        res = Resources()
        root = tasker.Context()
        manager: Manager = TaskManager(res.config(ctx=root))
        reply = manager.queue_task_async(lambda ctx, r: ctx.cancelled)
        root.cancel()
        assert reply.get() in (False, True)
        gevent.idle()
        assert manager.stop() is True
        assert_ended(manager, res)


class TestContextManager:
    """Leaving a with block stops the manager, unless it was already stopped or killed."""

    def test_leaving_stops_and_drains(self) -> None:
        res = Resources()
        with Manager(one_worker(res)) as manager:
            assert isinstance(manager, TaskManager)
            replies = [manager.queue_task_async(returning(i)) for i in range(5)]
            assert not any(r.ready() for r in replies)
        assert [r.get() for r in replies] == list(range(5))  # drained, not killed
        assert_ended(manager, res)

    def test_leaving_on_an_exception_stops_and_propagates(self) -> None:
        res = Resources()
        with pytest.raises(KeyError), Manager(one_worker(res)) as manager:
            reply = manager.queue_task_async(returning("drained"))
            raise KeyError("body failed")
        assert reply.get() == "drained"
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("end", ["kill", "stop"])
    def test_leaving_after_explicit_end_does_not_raise(self, end: str) -> None:
        res = Resources()
        with Manager(res.config()) as manager:
            assert manager.queue_task(returning(1)) == 1
            getattr(manager, end)()
        res.assert_all_destroyed_once()


class TestResourcesDestroyed:
    """After stop()/kill() every resource on_create made, pool and burst included, was destroyed once."""

    @pytest.mark.parametrize("end", ["stop", "kill"])
    def test_pool_base_and_burst(self, end: str) -> None:
        res = Resources()
        clock = FakeClock()
        manager: Manager = TaskManager(
            res.config(worker_count=1, max_worker_count=3, resource_pool_size=1, burst_interval=0.1, clock=clock)
        )
        assert res.created == [1, 2]  # pool first, then the base worker
        assert manager.run_task(lambda ctx, resource: resource) == 1
        gates = [Gate(value=i) for i in range(3)]
        replies = [manager.queue_task_async(g) for g in gates]
        gates[0].started.wait()
        clock.advance(0.1)
        gates[1].started.wait()
        clock.advance(0.1)
        gates[2].started.wait()
        stats = manager.stats()
        assert (stats.base_workers, stats.burst_workers, stats.active_workers) == (1, 2, 3)
        assert len(res.created) == 4
        assert res.destroyed == []
        if end == "stop":
            for g in gates:
                g.release.set()
            assert manager.stop() is True
            assert [r.get() for r in replies] == [0, 1, 2]
        else:
            manager.kill()
            assert all(isinstance(r.exception, TaskKilledError) for r in replies)
        assert len(res.destroyed) == 4
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("end", ["kill", "stop"])
    def test_end_right_after_construction(self, end: str) -> None:
        """Regression: workers killed before they first ran used to keep their resources."""
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        if end == "kill":
            manager.kill()
        else:
            assert manager.stop() is True
        assert len(res.created) == 4
        res.assert_all_destroyed_once()

    def test_temporary_run_task_resource(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(one_worker(res))
        assert manager.run_task(lambda ctx, resource: resource) == 2
        assert res.destroyed == [2]
        assert manager.stop() is True
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("end", ["stop", "kill"])
    def test_raising_on_destroy_is_logged_and_the_rest_are_destroyed(self, end: str) -> None:
        res = Resources()
        logger = RecordingLogger()
        seen: list[int] = []
        errors: list[Exception] = []

        def destroy(resource: int) -> None:
            seen.append(resource)
            if len(seen) <= 2:
                error = OSError(f"cannot close {resource}")
                errors.append(error)
                raise error

        manager: Manager = TaskManager(
            tasker.Config(on_create=res.create, on_destroy=destroy, worker_count=2, max_worker_count=2, logger=logger)
        )
        assert manager.queue_task(returning(1)) == 1
        if end == "stop":
            assert manager.stop() is True
        else:
            manager.kill()
        assert sorted(seen) == sorted(res.created) == [1, 2, 3, 4]
        for error in errors:
            assert logger.errors_with(error), logger.calls


class TestConstructionFailure:
    """A failing on_create at construction destroys what was made and raises ResourceCreationError."""

    @pytest.mark.parametrize(
        ("pool", "fail_on"),
        [(2, 1), (2, 2), (2, 3), (2, 4), (0, 1), (0, 2)],
        ids=["pool-first", "pool-last", "base-first", "base-last", "no-pool-first", "no-pool-last"],
    )
    def test_destroys_and_raises(self, pool: int, fail_on: int) -> None:
        res = Resources(fail_on={fail_on})
        with pytest.raises(tasker.ResourceCreationError) as info:
            TaskManager(res.config(worker_count=2, resource_pool_size=pool))
        cause = info.value.__cause__
        assert isinstance(cause, ConnectionError)
        assert str(cause) == f"on_create call {fail_on} fails"
        assert res.calls == fail_on
        assert res.created == list(range(1, fail_on))
        res.assert_all_destroyed_once()


class TestMetrics:
    """Arrivals count accepted submissions once; completions and failures (killed, cancelled) are counted."""

    def test_counts(self) -> None:
        res = Resources()
        clock = FakeClock()
        collector = CountingCollector(clock=clock)
        manager: Manager = TaskManager(
            res.config(worker_count=1, max_worker_count=1, collector=collector, clock=clock, max_retries=3)
        )
        attempts: list[int] = []

        def flaky(ctx: tasker.Context, resource: int) -> str:
            attempts.append(resource)
            if len(attempts) == 1:
                raise Unhealthy("bad")
            return "ok"

        assert [manager.queue_task(returning(i)) for i in range(3)] == [0, 1, 2]
        with pytest.raises(Healthy):
            manager.queue_task(raising(Healthy()))
        assert manager.queue_task(flaky) == "ok"
        with pytest.raises(TypeError):
            manager.queue_task(42)  # type: ignore[arg-type]
        assert collector.calls["arrival"] == 5  # not the rejected one, not the retry
        metrics = manager.metrics()
        assert metrics == collector.metrics()
        assert (metrics.total_tasks_completed, metrics.total_tasks_failed, metrics.total_tasks_retried) == (4, 1, 1)
        assert metrics.success_rate == pytest.approx(0.8)
        assert metrics.failure_rate == pytest.approx(0.2)

        _, held = hold_the_worker(manager)
        cancelled = manager.queue_task_async(returning("never"))
        assert cancelled.cancel() is True
        queued = manager.queue_task_with_priority_async(returning("never"))
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (1, 1)  # cancelled apart
        manager.kill()
        assert isinstance(held.exception, TaskKilledError)
        assert isinstance(queued.exception, TaskKilledError)
        with pytest.raises(ManagerStoppedError):
            manager.queue_task_async(returning("late"))
        metrics = manager.metrics()
        assert collector.calls["arrival"] == 8
        assert (metrics.total_tasks_completed, metrics.total_tasks_failed, metrics.total_tasks_retried) == (4, 1, 1)
        assert metrics.total_tasks_cancelled == 3  # one cancel, two dropped by kill()
        assert collector.calls["completion"] + collector.calls["failure"] + collector.calls["cancellation"] == 8
