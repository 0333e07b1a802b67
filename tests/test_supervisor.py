"""The supervisor actor: retiring unhealthy workers, redelivery, and on_create backoff."""

from __future__ import annotations

from typing import Any

import attrs
import gevent
import pytest
from gevent.event import AsyncResult, Event
from helpers import Gate, Manager, RecordingLogger, Resources, Unhealthy, check_health, one_worker, record, the_resource

import tasker
from tasker import TaskManager
from tasker.testing import FakeClock

EPS = 1e-6  # seconds: "just before" and "just after" a scheduled try


@attrs.define
class FailingResources(Resources):
    """Resources that also keep every exception their on_create raised."""

    errors: list[BaseException] = attrs.field(factory=list)

    def create(self) -> int:
        try:
            return super().create()
        except ConnectionError as exc:
            self.errors.append(exc)
            raise


class Flaky:
    """A task that fails unhealthily on its first ``failures`` runs, then returns its resource."""

    def __init__(self, failures: int, name: str = "", order: list[str] | None = None) -> None:
        self.failures = failures
        self.name = name
        self.order = order
        self.runs: list[int] = []
        self.errors: list[Unhealthy] = []

    def __call__(self, ctx: tasker.Context, resource: int) -> int:
        self.runs.append(resource)
        if self.order is not None:
            self.order.append(self.name)
        if len(self.runs) <= self.failures:
            exc = Unhealthy(f"{self.name} run {len(self.runs)}")
            self.errors.append(exc)
            raise exc
        return resource


def advance_to(clock: FakeClock, when: float) -> None:
    clock.advance(when - clock.now())


class TestUnhealthyFailure:
    """An unhealthy failure retires the worker, destroys its resource, replaces it and redelivers."""

    @pytest.mark.parametrize("max_retries", [1, 2, 3, 5])
    def test_retries_exhausted_after_max_retries_redeliveries(self, max_retries: int) -> None:
        resources = Resources()
        task = Flaky(failures=100)
        with Manager(one_worker(resources, max_retries=max_retries, logger=RecordingLogger())) as manager:
            reply = manager.submit(task)
            with pytest.raises(tasker.RetriesExhaustedError) as info:
                reply.get()
            error = info.value
            assert error.attempts == max_retries + 1
            assert reply.attempts == max_retries + 1
            assert error.cause is task.errors[-1]
            assert error.__cause__ is task.errors[-1]
            assert task.runs == list(range(1, max_retries + 2))  # a fresh worker each time
            # The last failed worker is replaced too.
            assert manager.queue_task(the_resource) == max_retries + 2
            assert resources.destroyed == list(range(1, max_retries + 2))
            metrics = manager.metrics()
            assert metrics.total_tasks_retried == max_retries
            assert metrics.total_tasks_failed == 1

    def test_max_retries_zero_never_redelivers(self) -> None:
        resources = Resources()
        task = Flaky(1)
        with Manager(one_worker(resources, max_retries=0, logger=RecordingLogger())) as manager:
            reply = manager.submit(task)
            with pytest.raises(Unhealthy) as info:
                reply.get()
            assert info.value is task.errors[0]
            assert reply.attempts == 1
            assert task.runs == [1]
            assert manager.queue_task(the_resource) == 2  # the worker was still replaced
            assert resources.destroyed == [1]
            assert manager.metrics().total_tasks_retried == 0

    @pytest.mark.parametrize(
        "variant",
        [
            "queue_task_once",
            "queue_task_with_priority_once",
            "queue_task_once_async",
            "queue_task_with_priority_once_async",
            "queue_task_once_with_callback",
            "queue_task_with_priority_once_with_callback",
            "submit",
        ],
    )
    def test_at_most_once_is_never_redelivered(self, variant: str) -> None:
        resources = Resources()
        task = Flaky(1)
        with Manager(one_worker(resources, max_retries=3, logger=RecordingLogger())) as manager:
            method = getattr(manager, variant)
            if variant == "submit":
                outcome: Any = method(task, once=True)
            elif variant.endswith("_async"):
                outcome = method(task)
            elif variant.endswith("_with_callback"):
                outcome = AsyncResult()
                method(task, lambda result, error: outcome.set_exception(error))
            else:
                outcome = gevent.spawn(method, task)
            with pytest.raises(Unhealthy) as info:
                outcome.get()
            assert info.value is task.errors[0]
            assert task.runs == [1]
            assert manager.queue_task(the_resource) == 2  # the worker was still replaced
            assert resources.destroyed == [1]
            assert manager.metrics().total_tasks_retried == 0


class TestRedeliveryOrder:
    """A redelivered message goes first in its lane, yet still after waiting priority messages."""

    @pytest.mark.parametrize("priority", [False, True], ids=["main", "priority"])
    def test_redelivered_message_goes_before_the_rest_of_its_lane(self, priority: bool) -> None:
        resources = Resources()
        order: list[str] = []
        gate = Gate()
        with Manager(one_worker(resources)) as manager:
            blocker = manager.submit(gate)
            gate.started.wait()
            flaky = manager.submit(Flaky(1, "A", order), priority=priority)
            others = [manager.submit(record(order, name), priority=priority) for name in "BC"]
            gate.release.set()
            gevent.joinall([blocker, flaky, *others], raise_error=True)
        assert order == ["A", "A", "B", "C"]

    def test_redelivered_main_message_waits_for_queued_priority_messages(self) -> None:
        resources = Resources()
        order: list[str] = []
        fail = Event()
        started = Event()
        runs: list[int] = []

        def blocks_then_fails(ctx: tasker.Context, resource: int) -> str:
            order.append("A")
            runs.append(resource)
            if len(runs) == 1:
                started.set()
                fail.wait()
                raise Unhealthy("A's resource went bad")
            return "A"

        with Manager(one_worker(resources)) as manager:
            first = manager.submit(blocks_then_fails)
            started.wait()
            main = manager.submit(record(order, "B"))
            urgent = manager.submit(record(order, "P"), priority=True)
            fail.set()
            gevent.joinall([first, main, urgent], raise_error=True)
        assert order == ["A", "P", "A", "B"]


class TestRetryOutcome:
    """A message that succeeds on a later delivery returns its value, and retries are counted."""

    @pytest.mark.parametrize(
        "failures",
        [
            pytest.param(1, id="worker_is_replaced_and_the_message_redelivered"),
            pytest.param(2, id="success_on_retry_returns_the_value"),
        ],
    )
    def test_redelivered_until_it_succeeds(self, failures: int) -> None:
        resources = Resources()
        task = Flaky(failures)
        attempts = failures + 1
        with Manager(one_worker(resources, max_retries=3)) as manager:
            reply = manager.submit(task)
            assert reply.get() == attempts  # the resource of the worker that succeeded
            assert reply.attempts == attempts
            assert task.runs == list(range(1, attempts + 1))  # a fresh worker each time
            assert resources.created == list(range(1, attempts + 1))
            assert resources.destroyed == list(range(1, attempts))
            assert manager.stats().base_workers == 1
            metrics = manager.metrics()
            assert metrics.total_tasks_retried == failures
            assert metrics.total_tasks_completed == 1
            assert metrics.total_tasks_failed == 0
        resources.assert_all_destroyed_once()

    def test_retries_of_several_messages_add_up(self) -> None:
        resources = Resources()
        tasks = [Flaky(1), Flaky(2), Flaky(0)]
        with Manager(one_worker(resources, worker_count=2, max_retries=3)) as manager:
            replies = [manager.submit(task) for task in tasks]
            gevent.joinall(replies, raise_error=True)
            assert [r.attempts for r in replies] == [2, 3, 1]
            assert manager.metrics().total_tasks_retried == 3
            assert manager.metrics().total_tasks_completed == 3


def retire_the_only_worker(manager: TaskManager[int, Any]) -> None:
    """Make the one worker fail unhealthily (max_retries=0) and let its replacement try to start."""
    with pytest.raises(Unhealthy):
        manager.queue_task(Flaky(1))
    gevent.idle()


class TestCreateBackoff:
    """A failing on_create is retried 0.05 s later, the wait doubling up to 2 s, logged once per streak."""

    # Times (s) of the tries after a first failure at t=0: gaps 0.05, 0.1, 0.2 ... capped at 2.0.
    TRIES = (0.05, 0.15, 0.35, 0.75, 1.55, 3.15, 5.15, 7.15, 9.15)

    def test_exact_retry_times(self) -> None:
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 100)))
        logger = RecordingLogger()
        manager: Manager = TaskManager(one_worker(resources, clock=clock, logger=logger, max_retries=0))
        retire_the_only_worker(manager)
        assert resources.calls == 2  # the first replacement failed at t=0
        gaps = []
        last = 0.0
        for when in self.TRIES:
            calls = resources.calls
            advance_to(clock, when - EPS)
            assert resources.calls == calls, f"tried before {when} s"
            advance_to(clock, when + EPS)
            assert resources.calls == calls + 1, f"no try at {when} s"
            gaps.append(round(when - last, 9))
            last = when
        assert gaps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
        assert manager.stats().base_workers == 0
        manager.kill()
        resources.assert_all_destroyed_once()

    def test_logged_once_per_streak_and_recovery_logged(self) -> None:
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 7)))  # calls 2..6 fail: a streak of 5
        logger = RecordingLogger()
        manager: Manager = TaskManager(one_worker(resources, clock=clock, logger=logger, max_retries=0))
        retire_the_only_worker(manager)
        advance_to(clock, 0.75 + EPS)  # the tries at 0.05, 0.15, 0.35, 0.75 fail too
        assert resources.calls == 6
        assert logger.count("warning", "on_create failed") == 1
        assert logger.count("info", "works again") == 0
        advance_to(clock, 1.55 + EPS)  # call 7 works
        assert resources.calls == 7
        assert manager.stats().base_workers == 1
        assert logger.count("warning", "on_create failed") == 1
        assert logger.count("info", "on_create works again after 5 failures") == 1
        assert manager.queue_task(the_resource) == resources.created[-1]

        # A new streak is logged again, and its backoff starts over at 0.05 s.
        resources.fail_on = {8, 9}
        start = clock.now()
        retire_the_only_worker(manager)
        assert resources.calls == 8
        assert logger.count("warning", "on_create failed") == 2
        advance_to(clock, start + 0.05 - EPS)
        assert resources.calls == 8
        advance_to(clock, start + 0.05 + EPS)
        assert resources.calls == 9
        advance_to(clock, start + 0.15 + EPS)
        assert resources.calls == 10
        assert logger.count("info", "on_create works again after 2 failures") == 1
        assert logger.count("warning", "on_create failed") == 2
        assert manager.stop() is True
        resources.assert_all_destroyed_once()

    def test_on_create_raising_gevent_timeout_backs_off(self) -> None:
        clock = FakeClock()
        calls = 0

        def create() -> int:
            nonlocal calls
            calls += 1
            if 2 <= calls <= 20:  # e.g. on_create bounds its connect with gevent.Timeout
                raise gevent.Timeout()
            return calls

        manager: Manager = TaskManager(
            tasker.Config(
                on_create=create,
                worker_count=1,
                max_worker_count=1,
                resource_pool_size=0,
                max_retries=0,
                check_health=check_health,
                clock=clock,
                logger=RecordingLogger(),
            )
        )
        retire_the_only_worker(manager)
        calls_at_zero = calls
        manager.kill()
        assert calls_at_zero == 2  # one failed try, then a wait of 0.05 s


class TestNoWorkerAlive:
    """With no worker alive and on_create failing, callers get ResourceCreationError, never a hang."""

    def start_failing(
        self, clock: FakeClock, resources: FailingResources, **kwargs: Any
    ) -> tuple[TaskManager[int, Any], tasker.TaskResult, Event]:
        """One worker runs a task that turns unhealthy; the returned callable lets it fail."""
        manager: Manager = TaskManager(one_worker(resources, clock=clock, logger=RecordingLogger(), **kwargs))
        go = Event()
        started = Event()

        def blocks_then_fails(ctx: tasker.Context, resource: int) -> None:
            started.set()
            go.wait()
            raise Unhealthy("the resource went bad")

        first = manager.submit(blocks_then_fails)
        started.wait()
        return manager, first, go

    def test_queued_messages_fail_with_the_on_create_error_as_cause(self) -> None:
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 100)))
        manager, first, go = self.start_failing(clock, resources, max_retries=3)
        queued = [manager.submit(the_resource) for _ in range(3)]
        queued.append(manager.submit(the_resource, priority=True))
        go.set()
        for reply in [first, *queued]:  # the redelivered message fails the same way
            with pytest.raises(tasker.ResourceCreationError) as info:
                reply.get()
            assert info.value.__cause__ is resources.errors[0]
        assert first.attempts == 1
        assert clock.now() == 0.0  # at once: nobody waited for a backoff
        manager.kill()

    def test_new_submissions_fail_at_the_next_failed_try(self) -> None:
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 100)))
        manager, first, go = self.start_failing(clock, resources, max_retries=0)
        go.set()
        with pytest.raises(Unhealthy):
            first.get()
        gevent.idle()
        assert resources.calls == 2  # first failed try at t=0; the next ones at 0.05, 0.15, 0.35 ...
        advance_to(clock, 0.02)
        reply = manager.submit(the_resource)
        advance_to(clock, 0.05 - EPS)
        assert not reply.ready()
        advance_to(clock, 0.05 + EPS)
        with pytest.raises(tasker.ResourceCreationError) as info:
            reply.get(block=False)
        assert info.value.__cause__ is resources.errors[-1]
        assert len(resources.errors) == 2

        # However long the streak, a caller waits at most the cap (2 s) for its answer.
        advance_to(clock, 20.0)
        submitted_at = clock.now()
        late = manager.submit(the_resource)
        while not late.ready():
            clock.advance(0.1)
            assert clock.now() - submitted_at <= 2.0 + EPS, "a caller waited past the backoff cap"
        with pytest.raises(tasker.ResourceCreationError):
            late.get()
        manager.kill()

    def test_recovers_by_itself_when_on_create_works_again(self) -> None:
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 5)))  # calls 2, 3, 4 fail
        manager, first, go = self.start_failing(clock, resources, max_retries=0)
        go.set()
        with pytest.raises(Unhealthy):
            first.get()
        gevent.idle()
        advance_to(clock, 0.15 + EPS)  # tries at 0 and 0.05 and 0.15 fail
        assert resources.calls == 4
        waiting = manager.submit(the_resource)
        advance_to(clock, 0.35 + EPS)  # call 5 works
        assert resources.created == [1, 2]  # ids count successful creations
        assert waiting.get(block=False) == 2
        assert manager.queue_task(the_resource) == 2
        assert manager.stats().base_workers == 1
        assert manager.stop() is True
        resources.assert_all_destroyed_once()


class TestShutdownDuringBackoff:
    """stop() and kill() end, and answer every caller, while replacements keep failing."""

    def failing_manager(self, fail_on: set[int] | None = None) -> tuple[FakeClock, FailingResources, Manager]:
        """A one-worker manager whose worker was retired and whose on_create fails on ``fail_on``.

        By default every call after the first fails; the first replacement (call 2) has
        already failed when this returns, and the next try is due at 0.05 s.
        """
        clock = FakeClock()
        resources = FailingResources(fail_on=set(range(2, 100)) if fail_on is None else fail_on)
        manager: Manager = TaskManager(one_worker(resources, clock=clock, logger=RecordingLogger(), max_retries=0))
        retire_the_only_worker(manager)
        assert resources.calls == 2 and manager.stats().base_workers == 0
        return clock, resources, manager

    def test_stop_with_nothing_queued_returns_at_once(self) -> None:
        clock, resources, manager = self.failing_manager()
        assert manager.stop() is True
        assert clock.sleepers == 0  # the pending restart was cancelled
        assert clock.now() == 0.0
        resources.assert_all_destroyed_once()

    def test_stop_ends_and_answers_queued_callers(self) -> None:
        clock, resources, manager = self.failing_manager()
        queued = [manager.submit(the_resource, priority=i % 2 == 0) for i in range(4)]
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        with pytest.raises(tasker.ManagerStoppedError):
            manager.submit(the_resource)
        while not stopper.dead:
            assert clock.now() <= 2.0, "stop() hung while on_create kept failing"
            clock.advance(0.01)
        assert stopper.get() is True
        assert all(isinstance(reply.exception, tasker.ResourceCreationError) for reply in queued), queued
        assert clock.sleepers == 0
        resources.assert_all_destroyed_once()

    def test_stop_runs_queued_messages_if_on_create_recovers(self) -> None:
        clock, resources, manager = self.failing_manager(fail_on={2})
        queued = [manager.submit(the_resource) for _ in range(3)]
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        advance_to(clock, 0.05 + EPS)  # the next try works: the queue drains normally
        assert stopper.get() is True
        assert [reply.get(block=False) for reply in queued] == [2, 2, 2]
        resources.assert_all_destroyed_once()

    def test_kill_ends_at_once_and_answers_queued_callers(self) -> None:
        clock, resources, manager = self.failing_manager()
        queued = [manager.submit(the_resource, priority=i % 2 == 0) for i in range(4)]
        manager.kill()
        assert all(isinstance(reply.exception, tasker.TaskKilledError) for reply in queued), queued
        assert clock.now() == 0.0
        assert clock.sleepers == 0
        assert resources.calls == 2  # no try after kill
        resources.assert_all_destroyed_once()

    def test_kill_during_a_stop_waiting_for_the_next_try(self) -> None:
        clock, resources, manager = self.failing_manager()
        queued = [manager.submit(the_resource) for _ in range(2)]
        stopper = gevent.spawn(manager.stop)
        gevent.idle()
        assert not stopper.dead
        manager.kill()
        assert stopper.get() is False
        assert all(isinstance(reply.exception, tasker.TaskKilledError) for reply in queued), queued
        assert clock.sleepers == 0
        resources.assert_all_destroyed_once()

    def test_kill_from_the_backoff_warning_leaves_no_restart_timer(self) -> None:
        """Regression: the supervisor armed its restart timer after the logger's kill() had
        closed it, and the timer outlived the manager."""
        clock = FakeClock()
        resources = FailingResources(fail_on={2})
        manager: Manager

        class Killing(RecordingLogger):
            def warning(self, msg: str, *args: Any) -> None:
                super().warning(msg, *args)
                if "retrying with backoff" in msg:
                    manager.kill()

        manager = TaskManager(one_worker(resources, clock=clock, logger=Killing(), max_retries=0))
        retire_the_only_worker(manager)
        assert manager._shutdown.finished.is_set()
        assert clock.sleepers == 0
        resources.assert_all_destroyed_once()

    def test_kill_while_the_logger_blocks_in_works_again(self) -> None:
        """Regression: a worker killed in its "on_create works again" log, after on_create
        returned but before its loop began, never destroyed its resource."""
        clock = FakeClock()
        resources = FailingResources(fail_on={2})
        in_log, never = Event(), Event()

        class Blocking(RecordingLogger):
            def info(self, msg: str, *args: Any) -> None:
                super().info(msg, *args)
                if "works again" in msg:
                    in_log.set()
                    never.wait()  # a handler doing I/O that does not come back

        manager: Manager = TaskManager(one_worker(resources, clock=clock, logger=Blocking(), max_retries=0))
        retire_the_only_worker(manager)
        advance_to(clock, 0.05 + EPS)  # call 3 works; its worker logs the recovery
        assert in_log.wait(5)
        assert resources.created == [1, 2]  # ids count the resources made
        manager.kill()
        resources.assert_all_destroyed_once()

