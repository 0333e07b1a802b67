"""BaseExceptions raised by user code: every caller still gets a reply, workers are replaced,
and gevent's meaning of KeyboardInterrupt/SystemExit is kept.

gevent's hub treats ``Hub.SYSTEM_ERROR`` (KeyboardInterrupt, SystemExit, SystemError)
that kills a greenlet as a process-level event: ``Hub.handle_error`` passes it to
``Hub.handle_system_error``, which throws it into the hub's parent, the main greenlet,
wherever that one is blocked. Other BaseExceptions (gevent.Timeout, GreenletExit, your
own) only end the greenlet that raised them. These tests pin both halves for tasks,
callbacks, run_task, on_create, on_destroy and check_health.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import gevent
import pytest
from conftest import manager_greenlets
from gevent.event import Event
from helpers import Gate, Manager, RecordingLogger, Resources, Unhealthy, hold_the_worker

import tasker
from tasker import ManagerStoppedError, ResourceCreationError, TaskKilledError, TaskManager, TaskTimeoutError
from tasker.testing import FakeClock


class Custom(BaseException):
    """A BaseException of the user's own, neither Exception nor a gevent/system one."""


@pytest.fixture
def hub_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What gevent's hub prints about greenlets that died with an error."""
    stream = io.StringIO()
    monkeypatch.setattr(gevent.get_hub(), "exception_stream", stream)
    yield stream


def raising(exc: BaseException) -> Callable[[tasker.Context, int], Any]:
    def task(ctx: tasker.Context, resource: int) -> Any:
        raise exc

    return task


def returning(value: Any) -> Callable[[tasker.Context, int], Any]:
    return lambda ctx, resource: value


def settle() -> None:
    for _ in range(3):
        gevent.idle()


def finish_cleanly(manager: Manager, res: Resources) -> None:
    assert manager.stop() is True
    res.assert_all_destroyed_once()
    assert manager_greenlets(manager) == []


class TestGevent:
    """The gevent behaviour these tests rely on is what gevent documents."""

    def test_system_errors_go_to_the_main_greenlet(self, hub_errors: io.StringIO) -> None:
        hub = gevent.get_hub()
        assert issubclass(KeyboardInterrupt, hub.SYSTEM_ERROR)
        assert issubclass(SystemExit, hub.SYSTEM_ERROR)
        assert not issubclass(gevent.Timeout, hub.SYSTEM_ERROR)
        assert issubclass(gevent.GreenletExit, hub.NOT_ERROR)
        interrupt = KeyboardInterrupt("from a greenlet")

        def dies() -> None:
            raise interrupt

        greenlet = gevent.spawn(dies)
        with pytest.raises(KeyboardInterrupt) as info:
            Event().wait()  # main greenlet blocked: the hub throws into it
        assert info.value is interrupt
        settle()
        assert greenlet.dead and greenlet.exception is interrupt
        assert "KeyboardInterrupt: from a greenlet" in hub_errors.getvalue()


CASES = [
    pytest.param(lambda: gevent.Timeout(), TaskTimeoutError, id="gevent.Timeout"),
    pytest.param(lambda: gevent.GreenletExit(), TaskKilledError, id="GreenletExit"),
    pytest.param(lambda: Custom("mine"), TaskKilledError, id="custom-BaseException"),
]


class TestTaskRaisesItsOwnBaseException:
    """A task's own gevent.Timeout/GreenletExit/BaseException becomes a tasker error; its worker is replaced."""

    @pytest.mark.parametrize(("make", "expected"), CASES)
    def test_reply_cause_and_replacement(
        self, make: Callable[[], BaseException], expected: type[Exception], hub_errors: io.StringIO
    ) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, resource_pool_size=0))
        exc = make()
        broken = manager.submit(raising(exc))
        behind = [manager.submit(returning(i)) for i in range(3)]
        assert [r.get() for r in behind] == [0, 1, 2]  # the queue behind it is served
        assert isinstance(broken.exception, expected)
        assert not isinstance(broken.exception, (gevent.Timeout, gevent.GreenletExit))
        assert broken.exception.__cause__ is exc
        settle()
        # The worker that ran it left for good: its resource destroyed, a new one made.
        assert res.created == [1, 2] and res.destroyed == [1]
        assert manager.stats().base_workers == 1
        assert manager.metrics().total_tasks_failed == 1
        finish_cleanly(manager, res)

    @pytest.mark.parametrize(("make", "expected"), CASES)
    def test_every_style_of_caller_gets_it(
        self, make: Callable[[], BaseException], expected: type[Exception], hub_errors: io.StringIO
    ) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2))
        with pytest.raises(expected) as info:
            manager.queue_task_with_priority(raising(make()))
        assert info.value.__cause__ is not None
        got: list[tuple[Any, BaseException | None]] = []
        called = Event()

        def callback(result: Any, error: BaseException | None) -> None:
            got.append((result, error))
            called.set()

        manager.queue_task_once_with_callback(raising(make()), callback)
        called.wait()
        assert got[0][0] is None and isinstance(got[0][1], expected)
        settle()
        assert manager.stats().base_workers == 2
        finish_cleanly(manager, res)

    def test_many_in_a_row_keep_the_worker_count(self, hub_errors: io.StringIO) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2, max_worker_count=2, resource_pool_size=0))
        replies = [manager.submit(raising(Custom(i))) for i in range(20)]
        ok = manager.submit(returning("still serving"))
        assert ok.get() == "still serving"
        assert all(isinstance(r.exception, TaskKilledError) for r in replies)
        settle()
        assert manager.stats().base_workers == 2
        assert len(res.created) == 22 and len(res.destroyed) == 20
        finish_cleanly(manager, res)


SYSTEM = [
    pytest.param(lambda: KeyboardInterrupt("ctrl-c in a task"), id="KeyboardInterrupt"),
    pytest.param(lambda: SystemExit(3), id="SystemExit"),
]


class TestSystemErrorsFromTasks:
    """KeyboardInterrupt/SystemExit in a task reach the main greenlet, and the caller still gets a reply."""

    @pytest.mark.parametrize("make", SYSTEM)
    def test_main_greenlet_blocked_in_get_receives_it(
        self, make: Callable[[], BaseException], hub_errors: io.StringIO
    ) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, resource_pool_size=0))
        exc = make()
        reply = manager.submit(raising(exc))
        with pytest.raises(type(exc)) as info:
            reply.get()
        assert info.value is exc
        # The reply itself was resolved, before the error went to the main greenlet.
        assert reply.ready()
        assert isinstance(reply.exception, TaskKilledError) and reply.exception.__cause__ is exc
        settle()
        assert manager.stats().base_workers == 1  # replaced
        assert manager.queue_task(returning("after")) == "after"
        assert res.created == [1, 2] and res.destroyed == [1]
        if isinstance(exc, KeyboardInterrupt):
            assert "ctrl-c in a task" in hub_errors.getvalue()  # printed, as gevent does
        finish_cleanly(manager, res)

    @pytest.mark.parametrize("make", SYSTEM)
    def test_a_spawned_caller_gets_the_reply_while_main_gets_the_error(
        self, make: Callable[[], BaseException], hub_errors: io.StringIO
    ) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        exc = make()
        caller = gevent.spawn(manager.queue_task, raising(exc))
        with pytest.raises(type(exc)) as info:
            caller.join()
        assert info.value is exc
        caller.join()
        assert isinstance(caller.exception, TaskKilledError)
        assert caller.exception.__cause__ is exc
        finish_cleanly(manager, res)

    def test_ctrl_c_during_stop_then_kill_finishes(self, hub_errors: io.StringIO) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, resource_pool_size=1))
        gate, held = hold_the_worker(manager)
        interrupt = KeyboardInterrupt("ctrl-c while draining")
        fatal = manager.submit(raising(interrupt))
        queued = manager.submit(Gate())  # never released: only kill() ends it
        gevent.spawn(gate.release.set)  # runs once stop() blocks
        with pytest.raises(KeyboardInterrupt):
            manager.stop()
        assert held.get() == "gate"
        assert isinstance(fatal.exception, TaskKilledError) and fatal.exception.__cause__ is interrupt
        with pytest.raises(ManagerStoppedError):
            manager.stop()
        manager.kill()  # still allowed: the interrupted stop() never finished
        assert isinstance(queued.exception, TaskKilledError)
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []


class TestRunTaskAndBaseExceptions:
    """run_task runs in the caller's greenlet: BaseExceptions pass through unchanged and nothing leaks."""

    @pytest.mark.parametrize("pool", [0, 1])
    @pytest.mark.parametrize("make", [lambda: gevent.Timeout(), lambda: Custom("mine")], ids=["Timeout", "custom"])
    def test_task_raises(self, pool: int, make: Callable[[], BaseException]) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, resource_pool_size=pool))
        exc = make()
        with pytest.raises(BaseException) as info:
            manager.run_task(raising(exc))
        assert info.value is exc
        assert manager.stats().available_resources == pool
        assert manager.run_task(returning(7)) == 7
        finish_cleanly(manager, res)

    def test_the_callers_own_timeout_fires_in_the_task(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, resource_pool_size=1))
        started = Event()

        def slow(ctx: tasker.Context, resource: int) -> None:
            started.set()
            Event().wait()

        timeout = gevent.Timeout(0.01)
        with pytest.raises(gevent.Timeout) as info, timeout:
            manager.run_task(slow)
        assert info.value is timeout and started.is_set()
        assert manager.stats().available_resources == 1
        finish_cleanly(manager, res)

    def test_the_callers_own_timeout_fires_in_on_create(self) -> None:
        created: list[int] = []
        destroyed: list[int] = []
        slow = Event()

        def create() -> int:
            if len(created) >= 1:
                slow.wait()  # the temporary resource takes forever
            created.append(len(created) + 1)
            return created[-1]

        config = tasker.Config(on_create=create, on_destroy=destroyed.append, worker_count=1, resource_pool_size=0)
        manager: Manager = TaskManager(config)
        with gevent.Timeout(0.01, False):  # False: the timeout ends the block quietly
            manager.run_task(returning("never"))
            raise AssertionError("run_task returned")
        assert manager._pool.in_flight == 0  # private: stop() must not wait for it
        assert manager.stop() is True
        assert sorted(destroyed) == sorted(created)


class TestOnCreateBaseException:
    """A BaseException from on_create: nothing leaks, the backoff still applies, callers get replies."""

    def test_timeout_at_construction_passes_through(self) -> None:
        """At construction (as in run_task) a gevent.Timeout is not wrapped: it may be the
        caller's own, and a caller's ``with gevent.Timeout(...)`` must still catch it."""
        res = _BaseFailing({3: gevent.Timeout})
        with pytest.raises(gevent.Timeout):
            TaskManager(res.config(worker_count=2, resource_pool_size=1))
        res.assert_all_destroyed_once()

    def test_callers_own_timeout_around_construction(self) -> None:
        res = Resources()
        slow = attrs.evolve(res.config(worker_count=2), on_create=lambda: gevent.sleep(10))
        timeout = gevent.Timeout(0.01)
        with pytest.raises(gevent.Timeout) as info, timeout:
            TaskManager(slow)
        assert info.value is timeout

    @pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, gevent.Timeout, Custom])
    def test_construction_destroys_what_it_made(self, kind: type[BaseException]) -> None:
        res = _BaseFailing({3: kind})
        with pytest.raises((kind, ResourceCreationError)):
            TaskManager(res.config(worker_count=2, resource_pool_size=1))
        assert res.created == [1, 2]
        res.assert_all_destroyed_once()

    def test_timeout_in_a_replacement_backs_off_and_fails_the_queue(self) -> None:
        clock = FakeClock()
        res = _BaseFailing(dict.fromkeys(range(2, 1000), gevent.Timeout))
        manager: Manager = TaskManager(
            res.config(worker_count=1, max_worker_count=1, resource_pool_size=0, clock=clock, max_retries=0)
        )
        bad = manager.submit(raising(Unhealthy("resource gone")))
        queued = manager.submit(returning("never"))
        for _ in range(50):
            gevent.idle()
        assert isinstance(bad.exception, Unhealthy)
        assert res.calls <= 3, f"{res.calls} on_create calls without the clock moving: no backoff"
        assert isinstance(queued.exception, ResourceCreationError)
        assert isinstance(queued.exception.__cause__, gevent.Timeout)
        manager.kill()
        res.assert_all_destroyed_once()


class _BaseFailing(Resources):
    """Resources whose n-th on_create raises a given BaseException type."""

    def __init__(self, raises: dict[int, type[BaseException]]) -> None:
        super().__init__()
        self.raises = raises

    def create(self) -> int:
        kind = self.raises.get(self.calls + 1)
        if kind is not None:
            self.calls += 1
            raise kind()
        return super().create()


class TestOnDestroyBaseException:
    """A BaseException from on_destroy must not stop the other resources from being destroyed."""

    def test_timeout_in_on_destroy(self, hub_errors: io.StringIO) -> None:
        attempted: list[int] = []

        def destroy(resource: int) -> None:
            attempted.append(resource)
            raise gevent.Timeout()  # a close() bounded by its own timeout

        res = Resources()
        config = tasker.Config(on_create=res.create, on_destroy=destroy, worker_count=2, resource_pool_size=2)
        manager: Manager = TaskManager(config)
        try:
            assert manager.stop() is True
            assert sorted(attempted) == res.created
            assert manager_greenlets(manager) == []
        finally:
            if not manager._shutdown.finished.is_set():  # private: let conftest see a finished manager
                manager._shutdown.finished.set()


class TestCheckHealthAndCallbacks:
    """BaseExceptions from check_health or a callback never cost a caller its reply."""

    def test_check_health_raises_a_base_exception(self, hub_errors: io.StringIO) -> None:
        res = Resources()

        def check(exc: BaseException) -> bool:
            raise Custom("check_health broke")

        config = tasker.Config(
            on_create=res.create, on_destroy=res.destroy, worker_count=1, max_worker_count=1, check_health=check
        )
        manager: Manager = TaskManager(config)
        failed = manager.submit(raising(ValueError("task")))
        failed.wait()
        # Like an Exception from check_health: the worker is treated as unhealthy and retried.
        assert isinstance(failed.exception, tasker.RetriesExhaustedError)
        assert isinstance(failed.exception.cause, ValueError)
        assert manager.queue_task(returning("next")) == "next"
        settle()
        assert manager.stats().base_workers == 1
        finish_cleanly(manager, res)

    def test_callback_raises_a_base_exception(self, hub_errors: io.StringIO) -> None:
        res = Resources()
        logger = RecordingLogger()
        manager: Manager = TaskManager(res.config(worker_count=1, logger=logger))
        calls: list[Any] = []

        def bad(result: Any, error: BaseException | None) -> None:
            calls.append(result)
            raise Custom("callback broke")

        manager.queue_task_with_callback(returning(1), bad)
        manager.queue_task_with_callback(returning(2), lambda result, error: calls.append(result))
        assert manager.queue_task(returning(3)) == 3
        settle()
        assert sorted(calls) == [1, 2]
        assert logger.count("error", "callback broke") == 1  # not lost silently: logged
        assert hub_errors.getvalue() == ""  # and it did not escape into the hub
        finish_cleanly(manager, res)  # the pending-callback count was released

    def test_callback_raises_keyboard_interrupt(self, hub_errors: io.StringIO) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        interrupt = KeyboardInterrupt("ctrl-c in a callback")

        def bad(result: Any, error: BaseException | None) -> None:
            raise interrupt

        manager.queue_task_with_callback(returning(1), bad)
        with pytest.raises(KeyboardInterrupt) as info:
            Event().wait()
        assert info.value is interrupt
        finish_cleanly(manager, res)
