"""The worker actor: one resource for its whole life, one task at a time, and how it exits."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import getcurrent
from helpers import Gate, Healthy, Manager, RecordingLogger, Resources, Unhealthy, one_worker, the_resource

import tasker
from tasker import TaskManager
from tasker._message import spent
from tasker.testing import FakeClock


class TestOneResourceForLife:
    """A worker creates one resource and every task it runs sees that same resource."""

    def test_every_task_sees_the_same_resource(self) -> None:
        resources = Resources()
        with Manager(one_worker(resources)) as manager:
            seen = [manager.queue_task(the_resource) for _ in range(20)]
            assert resources.destroyed == []
        assert seen == [1] * 20
        assert resources.created == [1]
        assert resources.destroyed == [1]

    def test_each_worker_greenlet_keeps_its_own_resource(self) -> None:
        resources = Resources()
        seen: list[tuple[Any, int]] = []

        def record(ctx: tasker.Context, resource: int) -> None:
            gevent.sleep(0)  # let the other workers take messages too
            seen.append((getcurrent(), resource))

        with Manager(one_worker(resources, worker_count=3)) as manager:
            replies = [manager.submit(record) for _ in range(60)]
            gevent.joinall(replies, raise_error=True)
            workers = {w.greenlet: w.resource for w in manager._supervisor.workers.values()}
        # Tasks run in the worker's own greenlet (no greenlet per task), always with its resource.
        assert {g for g, _ in seen} == set(workers)
        for greenlet, resource in seen:
            assert workers[greenlet] == resource
        assert sorted(workers.values()) == [1, 2, 3]
        assert resources.created == [1, 2, 3]


class TestOneTaskAtATime:
    """A worker starts its next task only when the current one has returned."""

    def test_second_task_waits_for_the_first(self) -> None:
        resources = Resources()
        gate = Gate()
        second_ran = Event()
        with Manager(one_worker(resources)) as manager:
            first = manager.submit(gate)
            second = manager.submit(lambda ctx, r: second_ran.set())
            gate.started.wait()
            gevent.idle()
            assert not second_ran.is_set()
            stats = manager.stats()
            assert (stats.busy_workers, stats.queued_tasks) == (1, 1)
            gate.release.set()
            assert first.get() == "gate"
            second.get()
            assert second_ran.is_set()
            assert manager.stats().busy_workers == 0

    def test_a_resource_is_never_used_by_two_tasks_at_once(self) -> None:
        resources = Resources()
        in_use: set[int] = set()
        overlaps: list[int] = []
        peak = 0

        def use(ctx: tasker.Context, resource: int) -> None:
            nonlocal peak
            if resource in in_use:
                overlaps.append(resource)
            in_use.add(resource)
            peak = max(peak, len(in_use))
            for _ in range(3):
                gevent.sleep(0)
            in_use.discard(resource)

        with Manager(one_worker(resources, worker_count=3)) as manager:
            gevent.joinall([manager.submit(use) for _ in range(50)], raise_error=True)
        assert overlaps == []
        assert peak == 3  # the three workers did run side by side


class TestHealthyErrors:
    """A healthy failure goes back to the caller as is, and the worker keeps its resource."""

    @pytest.mark.parametrize(
        ("overrides", "error_type", "message", "times"),
        [
            pytest.param({}, Healthy, "an ordinary task error", 1, id="healthy_error_keeps_the_worker"),
            pytest.param(
                {"check_health": None},
                Unhealthy,
                "would be unhealthy if anyone checked",
                3,
                id="without_check_health_every_error_is_healthy",
            ),
        ],
    )
    def test_the_worker_keeps_its_resource(
        self, overrides: dict[str, Any], error_type: type[Exception], message: str, times: int
    ) -> None:
        resources = Resources()
        error = error_type(message)

        def fail(ctx: tasker.Context, resource: int) -> None:
            raise error

        with Manager(one_worker(resources, **overrides)) as manager:
            for _ in range(times):
                reply = manager.submit(fail)
                with pytest.raises(error_type) as info:
                    reply.get()
                assert info.value is error
                assert reply.attempts == 1
            assert manager.queue_task(the_resource) == 1
            assert resources.created == [1]
            assert resources.destroyed == []
            assert manager.metrics().total_tasks_retried == 0

    def test_check_health_that_raises_means_unhealthy_and_is_logged(self) -> None:
        resources = Resources()
        logger = RecordingLogger()

        def broken_check(exc: BaseException) -> bool:
            raise RuntimeError("check_health is broken")

        runs: list[int] = []

        def fail_once(ctx: tasker.Context, resource: int) -> int:
            runs.append(resource)
            if len(runs) == 1:
                raise Healthy("healthy by any sane check")
            return resource

        config = one_worker(resources, check_health=broken_check, logger=logger)
        with Manager(config) as manager:
            reply = manager.submit(fail_once)
            assert reply.get() == 2  # redelivered to a replacement worker
            assert reply.attempts == 2
            assert runs == [1, 2]
            assert resources.destroyed == [1]
        errors = [msg for level, msg in logger.records if level == "error"]
        assert any("check_health raised" in msg and "check_health is broken" in msg for msg in errors), errors


def raise_timeout() -> BaseException:
    timeout: BaseException = gevent.Timeout()
    return timeout


def armed_timeout() -> BaseException:
    """A gevent.Timeout the task armed itself and that fired inside it."""
    try:
        with gevent.Timeout(0.001):
            Event().wait()
    except gevent.Timeout as fired:
        return fired  # type: ignore[no-any-return]  # gevent ships no stubs
    raise AssertionError("the timeout did not fire")


def greenlet_exit() -> BaseException:
    exit_: BaseException = gevent.GreenletExit()
    return exit_


class TestTaskRaisesBaseException:
    """A task's own Timeout/GreenletExit reaches the caller wrapped, and its worker is replaced."""

    @pytest.mark.parametrize(
        ("make", "expected"),
        [
            (raise_timeout, tasker.TaskTimeoutError),
            (armed_timeout, tasker.TaskTimeoutError),
            (greenlet_exit, tasker.TaskKilledError),
        ],
        ids=["Timeout", "armed-Timeout", "GreenletExit"],
    )
    def test_caller_gets_a_tasker_error_and_the_worker_is_replaced(
        self, make: Callable[[], BaseException], expected: type[tasker.TaskerError]
    ) -> None:
        resources = Resources()
        logger = RecordingLogger()
        originals: list[BaseException] = []

        def task(ctx: tasker.Context, resource: int) -> None:
            exc = make()
            originals.append(exc)
            raise exc

        with Manager(one_worker(resources, logger=logger)) as manager:
            reply = manager.submit(task)
            with pytest.raises(expected) as info:
                reply.get()
            error = info.value
            assert not isinstance(error, (gevent.Timeout, gevent.GreenletExit))
            assert len(originals) == 1  # never redelivered: the caller already has its answer
            assert error.__cause__ is originals[0]
            assert reply.attempts == 1
            # The worker left for good: its resource is destroyed, a replacement has a new one.
            assert manager.queue_task(the_resource) == 2
            assert resources.created == [1, 2]
            assert resources.destroyed == [1]
            assert manager.stats().base_workers == 1
            assert manager.metrics().total_tasks_failed == 1
        assert any(level == "warning" and "retired a worker" in msg for level, msg in logger.records)

    def test_blocking_variant_raises_the_wrapped_error(self) -> None:
        resources = Resources()
        timeout = gevent.Timeout()

        def task(ctx: tasker.Context, resource: int) -> None:
            raise timeout

        def exit_task(ctx: tasker.Context, resource: int) -> None:
            raise gevent.GreenletExit

        with Manager(one_worker(resources, logger=RecordingLogger())) as manager:
            with pytest.raises(tasker.TaskTimeoutError) as info:
                manager.queue_task(task)
            assert info.value.__cause__ is timeout
            with pytest.raises(tasker.TaskKilledError):
                manager.queue_task_with_priority(exit_task)
            assert manager.queue_task(the_resource) == 3


class TestResourceDestroyedOnExit:
    """The worker destroys its resource itself, once, whenever and however it exits."""

    def test_stop_destroys_each_resource_in_its_own_worker(self) -> None:
        resources = Resources()
        destroyed_in: dict[int, Any] = {}

        def destroy(resource: int) -> None:
            destroyed_in[resource] = getcurrent()
            resources.destroy(resource)

        config = tasker.Config(
            on_create=resources.create,
            on_destroy=destroy,
            worker_count=3,
            max_worker_count=3,
            resource_pool_size=0,
        )
        manager: Manager = TaskManager(config)
        gevent.joinall([manager.submit(the_resource) for _ in range(10)], raise_error=True)
        owners = {w.resource: w.greenlet for w in manager._supervisor.workers.values()}
        assert resources.destroyed == []
        assert manager.stop() is True
        resources.assert_all_destroyed_once()
        assert destroyed_in == owners

    def test_kill_destroys_the_resource_of_a_busy_worker(self) -> None:
        resources = Resources()
        gate = Gate()
        manager: Manager = TaskManager(one_worker(resources))
        reply = manager.submit(gate)
        gate.started.wait()
        manager.kill()
        with pytest.raises(tasker.TaskKilledError):
            reply.get()
        assert resources.destroyed == [1]

    def test_old_resource_is_destroyed_before_its_replacement_is_created(self) -> None:
        events: list[str] = []
        resources = Resources()

        def create() -> int:
            rid = resources.create()
            events.append(f"create {rid}")
            return rid

        def destroy(resource: int) -> None:
            events.append(f"destroy {resource}")
            resources.destroy(resource)

        def broken(ctx: tasker.Context, resource: int) -> None:
            raise gevent.GreenletExit

        config = tasker.Config(
            on_create=create,
            on_destroy=destroy,
            worker_count=1,
            max_worker_count=1,
            resource_pool_size=0,
            logger=RecordingLogger(),
        )
        with Manager(config) as manager:
            with pytest.raises(tasker.TaskKilledError):
                manager.queue_task(broken)
            assert manager.queue_task(the_resource) == 2
        assert events == ["create 1", "destroy 1", "create 2", "destroy 2"]


class TestContextReuse:
    """A finished task's context goes to the next task only if nothing kept it and it is live."""

    def test_an_unshared_live_context_is_reused(self) -> None:
        seen: list[int] = []
        with Manager(one_worker(Resources())) as manager:
            for _ in range(3):
                manager.queue_task(lambda ctx, r: seen.append(id(ctx)))
        assert len(set(seen)) == 1  # structural: the allocation a task is saved

    def test_a_kept_context_is_never_handed_to_another_task(self) -> None:
        kept: list[tasker.Context] = []
        later: list[tasker.Context] = []
        with Manager(one_worker(Resources())) as manager:
            manager.queue_task(lambda ctx, r: kept.append(ctx))
            manager.queue_task(lambda ctx, r: later.append(ctx))
            kept[0].cancel()  # the keeper cancels its own context: no other task may see it
            assert manager.queue_task(lambda ctx, r: ctx.cancelled) is False
        assert later[0] is not kept[0]

    def test_a_context_kept_by_a_child_is_never_reused(self) -> None:
        children: list[tasker.Context] = []
        later: list[tasker.Context] = []
        with Manager(one_worker(Resources())) as manager:
            manager.queue_task(lambda ctx, r: children.append(ctx.child()))
            manager.queue_task(lambda ctx, r: later.append(ctx))
        assert children[0]._parent is not later[0]

    def test_a_cancelled_context_is_never_reused(self) -> None:
        with Manager(one_worker(Resources())) as manager:

            def cancel_own(ctx: tasker.Context, resource: object) -> None:
                ctx.cancel()  # cancelled, then dropped: unshared, but not as good as new

            manager.queue_task(cancel_own)
            assert manager.queue_task(lambda ctx, r: ctx.cancelled) is False


class Task:
    """A task whose object and value can be watched by weak references."""

    def __init__(self, fails: bool = False, gate: Gate | None = None) -> None:
        self.fails = fails
        self.gate = gate

    def __call__(self, ctx: tasker.Context, resource: object) -> Value:
        if self.gate is not None:
            self.gate(ctx, resource)
        if self.fails:
            raise Healthy("it fails")
        return Value()


class Value:
    pass


class TestAnAnsweredReplyLetsGoOfItsTask:
    """A reply the caller keeps does not keep its task alive, nor what the task holds, as a
    gevent Greenlet lets go of its function once it has run; and a parked worker keeps
    nothing of its last task (not its value, which the caller may have let go)."""

    @pytest.mark.parametrize("outcome", ["value", "cancelled", "timeout"])
    def test_the_task_is_freed_once_answered(self, outcome: str) -> None:
        clock = FakeClock()
        with Manager(one_worker(Resources(), clock=clock)) as manager:
            gate = Gate()
            busy = manager.submit(Task(gate=gate)) if outcome == "cancelled" else None
            task = Task(gate=gate if outcome == "timeout" else None)
            ref = weakref.ref(task)
            reply = manager.submit(task, timeout=1.0 if outcome == "timeout" else None)
            del task
            if outcome == "cancelled":
                assert reply.cancel() is True  # still queued behind the busy worker
            if outcome == "timeout":
                assert gate.started.wait(5)
                clock.advance(1.0)  # answered at once; the task is interrupted
            gate.release.set()
            reply.wait(5)
            assert reply.ready()
            if busy is not None:
                busy.get(timeout=5)
            gevent.idle()  # the hub's callback that woke us still holds the reply: let it end
            assert ref() is None, "the answered reply (or the parked worker) keeps its task"
            expected = {"value": type(None), "cancelled": tasker.CancelledError, "timeout": tasker.TaskTimeoutError}
            assert isinstance(reply.exception, expected[outcome])

    def test_a_failed_reply_lets_go_of_its_task(self) -> None:
        # What the task's frames held stays reachable from the exception's traceback, as
        # anywhere in Python; tasker itself lets go of the task.
        with Manager(one_worker(Resources())) as manager:
            reply = manager.submit(Task(fails=True))
            reply.wait(5)
            assert isinstance(reply.exception, Healthy)
            assert reply._fn is spent

    def test_a_parked_worker_keeps_no_value(self) -> None:
        with Manager(one_worker(Resources())) as manager:
            ref = weakref.ref(manager.submit(Task()).get(timeout=5))  # the reply is let go at once
            gevent.idle()  # the hub's callback that woke us still holds the reply: let it end
            assert ref() is None, "the parked worker keeps its last task's value"
