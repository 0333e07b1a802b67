"""SPEC §2.6 additions: per-task timeouts, ``stop(timeout=)``, and ``cancel()`` on a submission's reply."""

from __future__ import annotations

from typing import Any

import attrs
import gevent
import pytest
from gevent.event import Event
from helpers import Manager, Resources, hold_the_worker, one_worker, the_resource

import tasker
from tasker import TaskKilledError, TaskTimeoutError
from tasker.testing import FakeClock


def on_fake_clock(res: Resources, **kwargs: Any) -> tuple[Manager, FakeClock]:
    """One worker (resource id 1), no bursting, no pool, on virtual time."""
    clock = FakeClock()
    return Manager(one_worker(res, clock=clock, **kwargs)), clock


@attrs.define
class Stuck:
    """A task that ignores its context and blocks until released; records how it ended."""

    started: Event = attrs.field(factory=Event)
    release: Event = attrs.field(factory=Event)
    contexts: list[tasker.Context] = attrs.field(factory=list)
    resources: list[int] = attrs.field(factory=list)
    unwound: list[str] = attrs.field(factory=list)

    def __call__(self, ctx: tasker.Context, resource: int) -> str:
        self.contexts.append(ctx)
        self.resources.append(resource)
        self.started.set()
        try:
            self.release.wait()
        except BaseException as exc:
            self.unwound.append(type(exc).__name__)
            raise
        return "released"


def started(manager: Manager, **kwargs: Any) -> tuple[Stuck, tasker.TaskResult]:
    """Submit a Stuck task with ``kwargs`` and wait until it runs."""
    stuck = Stuck()
    reply = manager.submit(stuck, **kwargs)
    stuck.started.wait()
    return stuck, reply


class TestTaskTimeout:
    """A task that runs past its timeout is answered with TaskTimeoutError, its context cancelled, its worker kept."""

    def test_submit_timeout(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        stuck, reply = started(manager, timeout=1.0)
        clock.advance(0.9)
        assert not reply.ready()
        assert not stuck.contexts[0].cancelled
        clock.advance(0.2)
        assert reply.ready()
        error = reply.exception
        assert isinstance(error, TaskTimeoutError)
        assert isinstance(error, TimeoutError)
        assert isinstance(error, tasker.TaskerError)
        with pytest.raises(TimeoutError):
            reply.get()
        assert stuck.contexts[0].cancelled
        assert len(stuck.unwound) == 1  # the task was interrupted where it blocked
        assert manager.queue_task(the_resource) == stuck.resources[0] == 1  # the worker survived
        assert manager.stop() is True
        assert res.created == [1]
        res.assert_all_destroyed_once()

    def test_config_task_timeout_applies_to_every_variant(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res, task_timeout=2.0)
        stuck = [Stuck() for _ in range(3)]
        callback_errors: list[BaseException | None] = []
        reply = manager.queue_task_async(stuck[0])
        stuck[0].started.wait()
        clock.advance(1.5)
        assert not reply.ready()
        clock.advance(0.5)
        assert isinstance(reply.exception, TaskTimeoutError)

        def blocking_caller() -> BaseException | None:
            try:
                manager.queue_task_with_priority(stuck[1])
            except TaskTimeoutError as exc:
                return exc
            return None

        caller = gevent.spawn(blocking_caller)
        stuck[1].started.wait()
        clock.advance(2.0)
        assert isinstance(caller.get(), TaskTimeoutError)

        manager.queue_task_once_with_callback(stuck[2], lambda result, error: callback_errors.append(error))
        stuck[2].started.wait()
        clock.advance(2.0)
        assert manager.stop() is True
        assert len(callback_errors) == 1 and isinstance(callback_errors[0], TaskTimeoutError)
        assert all(s.contexts[0].cancelled for s in stuck)
        assert [s.resources[0] for s in stuck] == [1, 1, 1]
        res.assert_all_destroyed_once()

    def test_submit_timeout_overrides_config(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res, task_timeout=10.0)
        _, reply = started(manager, timeout=1.0)
        clock.advance(1.0)
        assert isinstance(reply.exception, TaskTimeoutError)
        assert manager.stop() is True

    def test_task_that_finishes_in_time(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        stuck, reply = started(manager, timeout=1.0)
        clock.advance(0.5)
        stuck.release.set()
        assert reply.get() == "released"
        clock.advance(5.0)  # the timer is gone: nothing happens to the reply or the worker
        assert reply.get() == "released"
        assert not stuck.contexts[0].cancelled
        assert manager.queue_task(the_resource) == 1
        assert manager.stop() is True

    def test_time_waiting_in_the_queue_does_not_count(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        gate, _ = hold_the_worker(manager)
        reply = manager.submit(lambda ctx, resource: "ran", timeout=1.0)
        clock.advance(5.0)
        assert not reply.ready()
        gate.release.set()
        assert reply.get() == "ran"
        assert manager.stop() is True

    def test_cooperative_task_sees_its_context_cancelled(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        saw: list[bool] = []
        started = Event()

        def cooperative(ctx: tasker.Context, resource: int) -> str:
            started.set()
            saw.append(ctx.wait())
            return "ended early"

        reply = manager.submit(cooperative, timeout=3.0)
        started.wait()
        clock.advance(3.0)
        assert isinstance(reply.exception, TaskTimeoutError)  # the timeout answers, not the task
        assert saw in ([], [True])
        assert manager.queue_task(the_resource) == 1
        assert manager.stop() is True

    def test_unhealthy_timeout_replaces_the_worker(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res, check_health=lambda exc: not isinstance(exc, TaskTimeoutError))
        stuck, reply = started(manager, timeout=1.0)
        clock.advance(1.0)
        assert isinstance(reply.exception, TaskTimeoutError)
        assert stuck.contexts[0].cancelled
        assert manager.queue_task(the_resource) == 2  # a new worker with a new resource
        assert res.destroyed == [1]
        assert len(stuck.contexts) == 1  # the timed-out message is not redelivered
        assert manager.stop() is True
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("bad", [0, -1, True, "1"])
    def test_bad_timeout(self, bad: Any) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        ran: list[int] = []
        with pytest.raises(ValueError):
            manager.submit(lambda ctx, resource: ran.append(1), timeout=bad)
        assert manager.stop() is True
        assert ran == []


class TestStopTimeout:
    """stop(timeout=) drains for at most that long on the manager's clock, then kills."""

    def test_escalates_to_kill(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        stuck, held = started(manager)
        ran: list[int] = []
        queued = manager.queue_task_async(lambda ctx, resource: ran.append(1))
        stopper = gevent.spawn(manager.stop, timeout=5.0)
        gevent.idle()
        clock.advance(4.9)
        assert not stopper.ready()
        assert not held.ready()
        clock.advance(0.2)
        assert stopper.get() is False
        assert isinstance(held.exception, TaskKilledError)
        assert isinstance(queued.exception, TaskKilledError)
        assert stuck.contexts[0].cancelled
        assert ran == []
        with pytest.raises(tasker.ManagerStoppedError):
            manager.kill()
        res.assert_all_destroyed_once()

    def test_drains_in_time(self) -> None:
        res = Resources()
        manager, clock = on_fake_clock(res)
        stuck, held = started(manager)
        queued = manager.queue_task_with_priority_async(lambda ctx, resource: ctx.cancelled)
        stopper = gevent.spawn(manager.stop, timeout=5.0)
        gevent.idle()
        clock.advance(4.0)
        assert not stopper.ready()
        stuck.release.set()
        assert stopper.get() is True
        assert held.get() == "released"
        assert queued.get() is False  # drained with a live context
        clock.advance(10.0)  # the expired deadline changes nothing afterwards
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("bad", [0, -2.5, True])
    def test_bad_timeout_leaves_the_manager_running(self, bad: Any) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        with pytest.raises(ValueError):
            manager.stop(timeout=bad)
        assert manager.queue_task(the_resource) == 1
        assert manager.stop() is True


class TestCancel:
    """cancel() withdraws a queued submission or cancels a running task's context; False once done."""

    def test_queued_message_is_withdrawn(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        gate, _ = hold_the_worker(manager)
        ran: list[str] = []
        reply = manager.queue_task_async(lambda ctx, resource: ran.append("ran"))
        other = manager.queue_task_async(lambda ctx, resource: "other")
        assert manager.stats().queued_tasks == 2
        assert reply.cancel() is True
        assert reply.ready()
        assert isinstance(reply.exception, tasker.CancelledError)
        with pytest.raises(tasker.CancelledError):
            reply.get()
        assert manager.stats().queued_tasks == 1
        assert reply.cancel() is False  # already answered
        gate.release.set()
        assert other.get() == "other"
        assert manager.stop() is True
        assert ran == []

    def test_message_handed_to_an_idle_worker_is_withdrawn(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        ran: list[str] = []
        reply = manager.queue_task_async(lambda ctx, resource: ran.append("ran"))
        assert reply.cancel() is True  # before the worker got to run it
        assert isinstance(reply.exception, tasker.CancelledError)
        assert manager.queue_task(the_resource) == 1
        assert manager.stop() is True
        assert ran == []

    def test_running_task_has_its_context_cancelled(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        started = Event()

        def cooperative(ctx: tasker.Context, resource: int) -> str:
            started.set()
            ctx.wait()
            return "own value"

        reply = manager.queue_task_async(cooperative)
        started.wait()
        gevent.idle()
        assert not reply.ready()
        assert reply.cancel() is True
        assert reply.get() == "own value"
        assert reply.cancel() is False
        assert manager.queue_task(the_resource) == 1  # the worker carries on
        assert manager.stop() is True

    def test_running_task_may_raise_cancelled(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        started, go = Event(), Event()

        def checking(ctx: tasker.Context, resource: int) -> str:
            started.set()
            go.wait()
            ctx.check()
            return "not cancelled"

        reply = manager.queue_task_async(checking)
        started.wait()
        assert reply.cancel() is True
        go.set()
        with pytest.raises(tasker.CancelledError):
            reply.get()
        assert manager.stop() is True

    def test_cancel_after_done(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res)
        reply = manager.queue_task_async(lambda ctx, resource: "done")
        assert reply.get() == "done"
        assert reply.cancel() is False
        assert reply.get() == "done"
        failed = manager.queue_task_async(lambda ctx, resource: 1 / 0)
        failed.wait()
        assert failed.cancel() is False
        assert isinstance(failed.exception, ZeroDivisionError)
        assert manager.stop() is True

    def test_cancel_frees_room_for_a_blocked_submitter(self) -> None:
        res = Resources()
        manager, _ = on_fake_clock(res, max_queue_size=1)
        gate, held = hold_the_worker(manager)
        queued = manager.queue_task_async(lambda ctx, resource: "queued")
        blocked = gevent.spawn(manager.submit, lambda ctx, resource: "third")
        gevent.idle()
        assert not blocked.ready()
        assert manager.stats().blocked_submitters == 1
        assert queued.cancel() is True
        third = blocked.get()  # got the room the cancel freed
        assert isinstance(third, tasker.TaskResult)
        stats = manager.stats()
        assert (stats.blocked_submitters, stats.queued_tasks) == (0, 1)
        gate.release.set()
        assert held.get() == "gate"
        assert third.get() == "third"
        assert isinstance(queued.exception, tasker.CancelledError)
        assert manager.stop() is True
