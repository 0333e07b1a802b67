"""Hostile call sites (issue #10): regression tests for each family fixed so far.

Each case asserts the promises: every reply resolved once, every resource destroyed
once, no manager greenlet left alive, and the call returned.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import attrs
import gevent
import pytest
from conftest import manager_greenlets
from gevent.event import Event
from helpers import Gate, RecordingLogger, Resources, Unhealthy, raising

import tasker
from tasker import ResourceCreationError, TaskKilledError, TaskManager
from tasker.testing import FakeClock

Manager = TaskManager[int, Any]


class Custom(BaseException):
    """A BaseException that is neither Exception nor one of gevent's."""


def finish(manager: Manager, res: Resources) -> None:
    assert manager.stop() is True
    res.assert_all_destroyed_once()
    assert manager_greenlets(manager) == []


class TestParkedWorkerDies:
    """A timer a task leaves behind kills or times out its worker later, while it is parked."""

    @pytest.mark.parametrize("leftover", ["kill", "timeout"])
    def test_later_submissions_are_answered_and_the_worker_replaced(self, leftover: str) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        fired = Event()

        def careless(ctx: tasker.Context, resource: int) -> str:
            me = gevent.getcurrent()
            if leftover == "kill":

                def later() -> None:
                    me.kill(block=False)
                    fired.set()

                gevent.spawn_later(0.02, later)
            else:
                gevent.Timeout.start_new(0.02)  # never cancelled
                gevent.spawn_later(0.03, fired.set)
            return "left a timer"

        assert manager.queue_task(careless) == "left a timer"
        fired.wait()
        gevent.idle()
        assert [manager.queue_task((lambda n: lambda ctx, r: n)(i)) for i in range(3)] == [0, 1, 2]
        assert manager.stats().base_workers == 1
        assert len(res.created) == 3  # the pool's, the first worker's, its replacement's
        finish(manager, res)

    def test_a_message_handed_to_a_worker_as_it_dies_is_redelivered(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        gevent.idle()
        (worker,) = manager._supervisor.workers.values()
        assert manager._mailbox.idle == [worker]
        reply = manager.submit(lambda ctx, r: "ran elsewhere")  # handed over, not yet switched to
        worker.greenlet.kill(block=False)  # lands before the hand-off runs
        assert reply.get() == "ran elsewhere"
        assert reply.attempts == 1
        finish(manager, res)

    def test_a_message_cancelled_on_its_way_to_the_dying_worker_is_let_go(self) -> None:
        """Regression: the supervisor put the answered message back in its lane, and a
        worker then ran tasker's placeholder for a spent task, whose RuntimeError went to
        check_health (and retired a healthy worker)."""
        res = Resources()
        seen: list[BaseException] = []

        def check_health(exc: BaseException) -> bool:
            seen.append(exc)
            return False

        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, check_health=check_health))
        gevent.idle()
        (worker,) = manager._supervisor.workers.values()
        # A Timeout a task left behind fires into the parked worker, before the hand-off below.
        gevent.get_hub().loop.run_callback(worker.greenlet.throw, gevent.Timeout())
        reply = manager.submit(lambda ctx, r: "never")  # handed over, not yet switched to
        assert reply.cancel() is True
        assert manager.queue_task(lambda ctx, r: r) == res.created[-1]  # the replacement's
        assert isinstance(reply.exception, tasker.CancelledError)
        assert seen == []
        assert manager.stats().queued_tasks == 0
        finish(manager, res)

    def test_a_worker_killed_before_it_first_ran_gives_back_its_resource(self) -> None:
        """Regression: a base worker is handed a resource made at construction; killed
        before its greenlet ran, it never reached the release in its loop, and the
        supervisor replaced it without destroying that resource."""
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=2, max_worker_count=2))
        _, second = manager._supervisor.workers.values()  # made, not run yet
        handed = second.resource
        second.greenlet.kill(block=False)
        gevent.idle()
        assert res.destroyed == [handed]
        assert manager.stats().base_workers == 2  # replaced
        finish(manager, res)


class TestSlowCheckHealthAndATimeout:
    """A task that fails before its timeout, whose check_health then blocks past it: the
    caller is answered with TaskTimeoutError at the deadline, not when the check returns.
    Regression: the timer was cancelled before check_health ran, so a check that never
    returned left the caller waiting forever."""

    @pytest.mark.parametrize("verdict", [True, False], ids=["healthy", "unhealthy"])
    def test_the_caller_is_answered_at_the_deadline(self, verdict: bool) -> None:
        res = Resources()
        clock = FakeClock()
        checking, decide = Event(), Event()
        runs: list[int] = []

        def check_health(exc: BaseException) -> bool:
            checking.set()
            decide.wait()  # asks some remote service, slowly
            return verdict

        def task(ctx: tasker.Context, resource: int) -> None:
            runs.append(resource)
            clock.sleep(0.5)
            raise Busy("failed before the deadline")

        manager: Manager = TaskManager(
            res.config(worker_count=1, max_worker_count=1, clock=clock, check_health=check_health)
        )
        reply = manager.submit(task, timeout=1.0)
        gevent.idle()  # the task starts at t = 0
        clock.advance(0.5)
        assert checking.wait(5) and not reply.ready()
        clock.advance(0.5)
        assert isinstance(reply.exception, tasker.TaskTimeoutError)
        decide.set()
        gevent.idle()
        assert runs == [runs[0]]  # an unhealthy verdict redelivers no answered message
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_retried) == (1, 0)
        finish(manager, res)


class TestTimeoutWhileKillWaits:
    """A task's timeout that fires while kill() waits for the task to unwind changes
    nothing: kill() answers its caller with TaskKilledError once the task has ended."""

    def test_the_caller_gets_task_killed_error(self) -> None:
        res = Resources()
        clock = FakeClock()
        manager: Manager = TaskManager(res.config(worker_count=1, clock=clock, kill_timeout=10.0))
        unwound, interrupts = Event(), []

        def slow_to_unwind(ctx: tasker.Context, resource: int) -> None:
            try:
                Event().wait()
            finally:
                try:
                    clock.sleep(2.0)  # a cleanup that takes a while
                except BaseException as exc:  # regression: the timeout's interrupt landed here
                    interrupts.append(exc)
                unwound.set()

        reply = manager.submit(slow_to_unwind, timeout=1.0)
        clock.advance(0.5)
        killer = gevent.spawn(manager.kill)
        gevent.idle()
        clock.advance(0.6)  # the timeout is due while kill() waits
        assert not reply.ready()
        clock.advance(1.5)
        assert unwound.is_set() and interrupts == []
        killer.get()
        assert isinstance(reply.exception, TaskKilledError)
        res.assert_all_destroyed_once()


class TestKillFromTheFailingWorker:
    """kill() from the worker whose task fails unhealthily still answers that task's caller."""

    def test_kill_from_the_task_before_it_raises_unhealthy(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))

        def task(ctx: tasker.Context, resource: int) -> None:
            manager.kill()
            raise Unhealthy("after kill")

        reply = manager.submit(task)
        with pytest.raises(Unhealthy):
            reply.get()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []

    @pytest.mark.parametrize("where", ["check_health", "on_destroy"])
    def test_kill_from_a_hook_of_the_unhealthy_worker(self, where: str) -> None:
        res = Resources()
        box: list[Manager] = []
        killed: list[bool] = []

        def kill_once() -> None:
            if not killed:
                killed.append(True)
                box[0].kill()

        def check(exc: BaseException) -> bool:
            if where == "check_health":
                kill_once()
            return not isinstance(exc, Unhealthy)

        def destroy(resource: int) -> None:
            res.destroy(resource)
            if where == "on_destroy" and len(res.destroyed) == 1:
                kill_once()

        config = tasker.Config(on_create=res.create, on_destroy=destroy, worker_count=1, check_health=check)
        manager: Manager = TaskManager(config)
        box.append(manager)

        def unhealthy(ctx: tasker.Context, resource: int) -> None:
            raise Unhealthy("bad resource")

        reply = manager.submit(unhealthy)
        reply.wait(5)
        assert reply.ready(), "the caller of the failing task was never answered"
        assert isinstance(reply.exception, (TaskKilledError, Unhealthy))
        gevent.idle()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []


class TestOnCreateBaseException:
    """on_create raising a BaseException that is not an Exception gets the backoff too."""

    @pytest.mark.parametrize("exc", [gevent.GreenletExit, Custom, gevent.Timeout])
    def test_replacement_backs_off_and_the_caller_is_answered(self, exc: type[BaseException]) -> None:
        clock = FakeClock()
        calls = [0]

        def create() -> int:
            calls[0] += 1
            if calls[0] > 2:  # the pool's and the first worker's work
                raise exc()
            return calls[0]

        config = tasker.Config(
            on_create=create, worker_count=1, max_worker_count=1, check_health=lambda e: False, clock=clock
        )
        manager: Manager = TaskManager(config)
        reply = manager.submit(lambda ctx, r: (_ for _ in ()).throw(Unhealthy("bad")))
        for _ in range(20):
            gevent.idle()
        assert calls[0] <= 4, f"on_create called {calls[0]} times with no time passing: no backoff"
        clock.advance(0.2)
        assert reply.ready()
        assert isinstance(reply.exception, ResourceCreationError)
        assert isinstance(reply.exception.__cause__, exc)
        manager.kill()
        assert manager_greenlets(manager) == []


class TestHookRaisesBaseException:
    """A logger or collector raising gevent.Timeout or a custom BaseException kills no actor."""

    @pytest.mark.parametrize("exc", [gevent.Timeout, Custom])
    def test_logger(self, exc: type[BaseException]) -> None:
        class Raising:
            def _raise(self, msg: str, *args: Any) -> None:
                raise exc()

            debug = info = warning = error = _raise

        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, logger=Raising()))

        def unhealthy(ctx: tasker.Context, resource: int) -> None:
            raise Unhealthy("logged by the supervisor")

        first = manager.submit(unhealthy)  # the supervisor logs the retirement
        first.wait(5)
        assert first.ready()
        assert not manager._supervisor.greenlet.dead
        assert manager.queue_task(lambda ctx, r: "still served") == "still served"
        finish(manager, res)

    @pytest.mark.parametrize("exc", [gevent.Timeout, Custom])
    def test_collector(self, exc: type[BaseException]) -> None:
        class Raising(tasker.Collector):
            def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
                raise exc()

        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=Raising()))
        assert [manager.queue_task((lambda n: lambda ctx, r: n)(i)) for i in range(3)] == [0, 1, 2]
        assert manager.stats().base_workers == 1
        finish(manager, res)


class TestYieldingCollector:
    """A collector whose record_arrival yields to the hub cannot make stop() lose that submission."""

    @pytest.mark.parametrize("variant", ["submit", "callback"])
    def test_stop_racing_the_arrival(self, variant: str) -> None:
        res = Resources()
        stopped: list[bool] = []

        class Yielding(tasker.Collector):
            def record_arrival(self) -> None:
                stopper = gevent.spawn(lambda: stopped.append(manager.stop()))
                stopper.join(timeout=0.3)  # yields until stop() has finished (or waits on the callback we owe)
                super().record_arrival()

        manager: Manager = TaskManager(res.config(worker_count=1, collector=Yielding()))
        called: list[Any] = []
        if variant == "submit":
            reply = manager.submit(lambda ctx, r: "answered")
        else:
            manager.queue_task_with_callback(lambda ctx, r: "answered", lambda result, error: called.append(result))
        manager._shutdown.finished.wait(5)
        assert stopped == [True]
        if variant == "submit":
            assert reply.get(timeout=0) == "answered"
        else:
            assert called == ["answered"]  # stop() waited for the callback it owed
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []


class TestKillCountsItsInterruptionsAsCancellations:
    """Every reply kill() answers with TaskKilledError is a cancellation in the metrics, not a failure.

    Found by the deep random schedules (``extra == (0, 1, -1)``): while kill() recorded
    the queued messages it dropped, a collector that yields let the worker greenlets it
    had just ended run; each answered its own task as "task raised GreenletExit", a
    failure, before kill() answered it as a cancellation.
    """

    def test_a_collector_yielding_while_kill_records(self) -> None:
        res = Resources()

        class Yielding(tasker.Collector):
            failed = cancelled = 0

            def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
                self.failed += 1
                super().record_failure(stamps)

            def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
                self.cancelled += 1
                gevent.sleep(0)  # a collector that sends its records over a gevent socket
                super().record_cancellation(stamps)

        collector = Yielding()
        manager: Manager = TaskManager(res.config(worker_count=2, max_worker_count=2, collector=collector))
        gates = [Gate(), Gate()]
        replies = [manager.submit(gate) for gate in gates] + [manager.submit(lambda ctx, r: "queued")]
        for gate in gates:
            gate.started.wait()
        manager.kill()
        assert all(isinstance(reply.exception, TaskKilledError) for reply in replies)
        assert (collector.failed, collector.cancelled) == (0, 3)
        assert manager.metrics().total_tasks_failed == 0
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []

    def test_a_task_raising_a_base_exception_of_its_own_is_a_failure(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))

        def exits(ctx: tasker.Context, resource: int) -> None:
            raise gevent.GreenletExit("the task's own")

        reply = manager.submit(exits)
        reply.wait(5)
        assert isinstance(reply.exception, TaskKilledError)
        assert manager.metrics().total_tasks_failed == 1
        finish(manager, res)


class TestKillAnswersOnceTheTaskHasEnded:
    """kill() tells a running task's caller "killed" only once the task's code no longer runs.

    Before, kill() answered the callers of running tasks at once, before their greenlets
    had unwound: a task whose ``finally`` yields (a rollback over a gevent socket) was
    still using its resource, and writing, after its caller had been told it was killed.
    """

    def test_the_caller_wakes_after_the_tasks_finally(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        started = Event()
        cleaned: list[str] = []

        def task(ctx: tasker.Context, resource: int) -> None:
            try:
                started.set()
                Event().wait()
            finally:
                gevent.sleep(0)  # a rollback over a socket: it yields
                cleaned.append("rolled back")

        reply = manager.submit(task)
        seen: list[list[str]] = []

        def wait_for_the_reply() -> None:
            reply.wait()
            seen.append(list(cleaned))

        caller = gevent.spawn(wait_for_the_reply)
        started.wait()
        manager.kill()
        caller.join()
        assert isinstance(reply.exception, TaskKilledError)
        assert seen == [["rolled back"]]  # told "killed" only after the cleanup
        assert manager.metrics().total_tasks_failed == 0
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []

    def test_a_task_ignoring_kill_is_answered_at_kill_timeout(self) -> None:
        res = Resources()
        clock = FakeClock()
        manager: Manager = TaskManager(
            res.config(worker_count=1, max_worker_count=1, kill_timeout=1.0, clock=clock)
        )
        started = Event()
        release = Event()

        def stubborn(ctx: tasker.Context, resource: int) -> None:
            started.set()
            while not release.is_set():
                try:
                    release.wait()
                except BaseException:  # ignores kill()
                    pass

        reply = manager.submit(stubborn)
        started.wait()
        killer = gevent.spawn(manager.kill)
        gevent.idle()
        assert not reply.ready()  # its code still runs: not told "killed" yet
        clock.advance(1.0)
        killer.join()
        assert isinstance(reply.exception, TaskKilledError)
        release.set()
        gevent.idle()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []


class Blocking(tasker.Collector):
    """The default collector, whose next record_arrival/record_completion blocks (a slow metrics sink)."""

    def __init__(self) -> None:
        super().__init__()
        self.block: str | None = None  # the record that blocks next, once
        self.entered = Event()
        self.arrivals = self.terminal = self.cancelled = 0

    def _maybe_block(self, record: str) -> None:
        if self.block == record:
            self.block = None
            self.entered.set()
            Event().wait()  # until the caller's own Timeout or kill lands here

    def record_arrival(self) -> None:
        self.arrivals += 1
        super().record_arrival()
        self._maybe_block("arrival")

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        super().record_completion(stamps)
        self._maybe_block("completion")

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        super().record_failure(stamps)

    def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        self.cancelled += 1
        super().record_cancellation(stamps)


SUBMITTERS = ["submit", "queue_task", "queue_task_async", "queue_task_with_callback"]


class TestCallersOwnInterruptInTheCollector:
    """A caller's own gevent.Timeout, or a kill of its greenlet, that lands while tasker runs the
    collector in the caller's greenlet goes on to the caller; the submission is withdrawn.

    Before, Core.survive logged and swallowed it: submit returned as if nothing happened,
    the caller's Timeout was spent, and a greenlet.kill() of the caller did not end it.
    """

    def _submit(self, manager: Manager, how: str, ran: list[str], called: list[Any]) -> Any:
        task = lambda ctx, r: ran.append("ran")  # noqa: E731
        if how == "queue_task_with_callback":
            return manager.queue_task_with_callback(task, lambda result, error: called.append(error))
        return getattr(manager, how)(task)

    def _check_withdrawn(self, manager: Manager, collector: Blocking, ran: list[str], called: list[Any]) -> None:
        gevent.idle()
        assert manager.stats().queued_tasks == 0
        assert collector.arrivals == collector.terminal == 2  # the gate's, and the withdrawn one's
        assert collector.cancelled == 1  # withdrawn, counted once
        assert ran == [] and called == []  # never ran; no callback owed
        assert manager.stop() is True  # nothing left to wait for

    @pytest.mark.parametrize("how", SUBMITTERS)
    def test_the_callers_timeout_during_the_arrival(self, how: str) -> None:
        res = Resources()
        collector = Blocking()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gate = Gate()
        manager.submit(gate)  # the worker is busy: the submission stays queued
        gate.started.wait()
        collector.block = "arrival"
        ran: list[str] = []
        called: list[Any] = []
        timeout = gevent.Timeout(0.01)
        with pytest.raises(gevent.Timeout) as raised:
            with timeout:
                self._submit(manager, how, ran, called)
        assert raised.value is timeout
        gate.release.set()
        self._check_withdrawn(manager, collector, ran, called)
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("how", SUBMITTERS)
    def test_the_caller_killed_during_the_arrival(self, how: str) -> None:
        res = Resources()
        collector = Blocking()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gate = Gate()
        manager.submit(gate)
        gate.started.wait()
        collector.block = "arrival"
        ran: list[str] = []
        called: list[Any] = []
        after: list[str] = []

        def caller() -> None:
            self._submit(manager, how, ran, called)
            after.append("went on")

        greenlet = gevent.spawn(caller)
        collector.entered.wait()
        greenlet.kill()
        assert greenlet.dead and after == []
        assert isinstance(greenlet.value, gevent.GreenletExit)
        gate.release.set()
        self._check_withdrawn(manager, collector, ran, called)
        res.assert_all_destroyed_once()

    def test_a_submission_a_worker_already_took_has_its_context_cancelled(self) -> None:
        res = Resources()
        collector = Blocking()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gevent.idle()  # the worker is parked: the message is handed to it at once
        collector.block = "arrival"
        seen: list[bool] = []

        def cooperative(ctx: tasker.Context, resource: int) -> None:
            seen.append(ctx.wait(5))
            ctx.check()

        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.01):
                manager.submit(cooperative)
        assert manager.stop() is True
        assert seen == [True]  # the task saw its withdrawal
        assert collector.arrivals == collector.terminal == collector.cancelled == 1
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("interrupt", ["timeout", "kill"])
    @pytest.mark.parametrize("record", ["arrival", "completion"])
    def test_run_task(self, record: str, interrupt: str) -> None:
        res = Resources()
        collector = Blocking()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        collector.block = record
        ran: list[str] = []
        outcome: list[Any] = []

        def task(ctx: tasker.Context, resource: int) -> str:
            ran.append("ran")
            return "value"

        def caller() -> None:
            try:
                with gevent.Timeout(0.01) if interrupt == "timeout" else nullcontext():
                    outcome.append(manager.run_task(task))
            except gevent.Timeout as exc:
                outcome.append(exc)

        greenlet = gevent.spawn(caller)
        collector.entered.wait()
        if interrupt == "kill":
            greenlet.kill()
            assert isinstance(greenlet.value, gevent.GreenletExit) and outcome == []
        else:
            greenlet.join()
            assert len(outcome) == 1 and isinstance(outcome[0], gevent.Timeout)
        assert ran == ([] if record == "arrival" else ["ran"])
        assert manager.stats().available_resources == 1  # the pooled resource is back
        assert collector.terminal == 1
        assert manager.stop() is True  # not waiting for a run_task call
        res.assert_all_destroyed_once()

    @pytest.mark.parametrize("kind", [gevent.Timeout, gevent.GreenletExit, Custom])
    def test_what_a_collector_raises_itself_is_logged_and_the_submission_stands(
        self, kind: type[BaseException]
    ) -> None:
        res = Resources()
        logger = RecordingLogger()

        class Raising(tasker.Collector):
            def record_arrival(self) -> None:
                super().record_arrival()
                raise kind()

        config = res.config(worker_count=1, max_worker_count=1, collector=Raising(), logger=logger)
        manager: Manager = TaskManager(config)
        assert manager.submit(lambda ctx, r: "served").get() == "served"
        assert manager.run_task(lambda ctx, r: "ran") == "ran"
        assert logger.count("error", "collector.record_arrival raised") == 2
        assert manager.stop() is True
        assert manager.metrics().total_tasks_completed == 2
        res.assert_all_destroyed_once()


class TestCallersOwnInterruptInRunTasksOnDestroy:
    """run_task destroys its temporary resource in the caller's greenlet. A caller's own
    gevent.Timeout, or a kill of its greenlet, that lands while on_destroy blocks goes on to
    the caller, as one landing in the task does.

    Before, Core.destroy logged and swallowed it: run_task returned the value past the
    caller's deadline, and a greenlet.kill() of the caller did not end it.
    """

    @pytest.mark.parametrize("interrupt", ["timeout", "kill"])
    def test_it_reaches_the_caller(self, interrupt: str) -> None:
        res = Resources()
        logger = RecordingLogger()
        entered = Event()

        def destroy(rid: int) -> None:
            res.destroy(rid)
            if rid == 2:  # run_task's temporary (1 is the worker's)
                entered.set()
                Event().wait()  # until the caller's own Timeout or kill lands here

        config = attrs.evolve(
            res.config(worker_count=1, max_worker_count=1, resource_pool_size=0), on_destroy=destroy, logger=logger
        )
        manager: Manager = TaskManager(config)
        outcome: list[Any] = []
        timeout = gevent.Timeout(0.01)

        def caller() -> None:
            try:
                with timeout if interrupt == "timeout" else nullcontext():
                    outcome.append(manager.run_task(lambda ctx, r: "value"))
            except gevent.Timeout as exc:
                outcome.append(exc)

        greenlet = gevent.spawn(caller)
        assert entered.wait(5)
        if interrupt == "kill":
            greenlet.kill()
            assert isinstance(greenlet.value, gevent.GreenletExit) and outcome == []
        else:
            greenlet.join()
            assert outcome == [timeout]  # the caller's own, not the value after its deadline
        assert logger.count("error", "on_destroy raised") == 1
        assert manager._pool.in_flight == 0
        assert manager.stop() is True  # not waiting for a run_task call
        assert manager.metrics().total_tasks_completed == 1  # the task itself did complete
        res.assert_all_destroyed_once()


class TestBadInputFamily7:
    """Inputs accepted before issue #10 that failed later, or froze the loop, are refused at the call."""

    def test_context_wait_nan_is_refused(self) -> None:
        with pytest.raises(ValueError, match="nan"):
            tasker.Context().wait(float("nan"))  # would freeze the whole loop, a Timeout included
        with pytest.raises(TypeError, match="'1'"):
            tasker.Context().wait("1")  # type: ignore[arg-type]
        assert tasker.Context().wait(0) is False

    def test_context_parent_must_be_a_context(self) -> None:
        with pytest.raises(TypeError, match="'x'"):
            tasker.Context("x")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("field", "cls"), [("collector", tasker.Collector), ("clock", tasker.MonotonicClock), ("clock", FakeClock)]
    )
    def test_config_hooks_must_be_instances(self, field: str, cls: type) -> None:
        with pytest.raises(TypeError, match=f"Config.{field} must be an instance"):
            kwargs: dict[str, Any] = {field: cls}
            tasker.Config(on_create=lambda: 1, worker_count=1, **kwargs)

    @pytest.mark.parametrize("flag", ["priority", "once", "block"])
    @pytest.mark.parametrize("bad", ["no", "false", 1, 0, None])
    def test_flags_must_be_bools(self, flag: str, bad: Any) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        kwargs: dict[str, Any] = {flag: bad}
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            manager.submit(lambda ctx, r: 1, **kwargs)
        assert manager.metrics().task_arrival_rate == 0.0  # nothing was accepted
        finish(manager, res)

    def test_submit_after_the_parent_is_cancelled_raises_at_once(self) -> None:
        res = Resources()
        parent = tasker.Context()
        manager: Manager = TaskManager(res.config(worker_count=1, ctx=parent))
        parent.cancel()  # the watcher has not run yet: no yield since
        with pytest.raises(tasker.ManagerStoppedError, match="parent context"):
            manager.submit(lambda ctx, r: 1)
        with pytest.raises(tasker.ManagerStoppedError, match="parent context"):
            manager.run_task(lambda ctx, r: 1)
        assert manager._shutdown.finished.wait(5)
        res.assert_all_destroyed_once()


class TestKillInsideAnActorWhileAStopRuns:
    """Found by the deep hypothesis profile: the parent's graceful stop tore down the supervisor
    while the supervisor was inside kill() (called from the collector), losing the caller it
    was about to answer. Shutdown now never ends a greenlet that is itself in stop()/kill()."""

    def test_every_caller_answered(self) -> None:
        clock = FakeClock()
        res = Resources()
        parent = tasker.Context()
        box: list[Manager] = []
        armed: list[bool] = []

        class Killing(tasker.Collector):
            def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
                super().record_failure(stamps)
                if armed:
                    armed.clear()
                    assert gevent.getcurrent() is box[0]._supervisor.greenlet
                    box[0].kill()

        config = res.config(worker_count=1, max_worker_count=1, resource_pool_size=0, clock=clock, ctx=parent)
        manager: Manager = TaskManager(attrs.evolve(config, collector=Killing(clock=clock)))
        box.append(manager)
        gevent.idle()
        (worker,) = manager._mailbox.idle
        res.fail_on.update(range(res.calls + 1, res.calls + 100))  # every on_create from now on fails
        gevent.get_hub().loop.run_callback(worker.greenlet.throw, gevent.GreenletExit())
        gevent.idle()
        called: list[Any] = []  # a callback owed: kill() yields while it waits for it
        manager.queue_task_with_callback(lambda ctx, r: 1, lambda result, error: called.append(error))
        second = gevent.spawn(manager.queue_task, lambda ctx, r: 2)  # no worker: both wait for the restart
        gevent.idle()
        parent.cancel()  # a graceful stop begins in the watcher
        gevent.idle()
        armed.append(True)
        clock.advance(1.0)  # the restart fails: the supervisor fails the queue; kill() from its first record
        assert manager._shutdown.finished.wait(5)
        assert len(called) == 1 and isinstance(called[0], ResourceCreationError)
        second.join(5)
        assert isinstance(second.exception, ResourceCreationError)  # the second caller is answered too
        gevent.idle()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []


class TestKillWithACallbackSubmitterWaitingForRoom:
    """Found by the CI hypothesis profile: a callback-variant submitter blocked for room in a full
    lane owes a callback; kill() refuses it, and must hear that the callback is no longer owed."""

    def test_kill_returns(self) -> None:
        res = Resources()
        clock = FakeClock()  # kill_timeout on this clock never passes: only the notification ends the wait
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, max_queue_size=1, clock=clock))
        go = Event()
        killed = Event()

        def kills(ctx: tasker.Context, r: int) -> str:
            go.wait()
            manager.kill()  # from the task: kill() waits for nothing else that could wake it
            killed.set()
            return "killed"

        running = manager.submit(kills)
        queued = manager.submit(lambda ctx, r: "queued")  # the lane is full now
        called: list[Any] = []
        waiter = gevent.spawn(
            manager.queue_task_with_callback, lambda ctx, r: "waits", lambda result, error: called.append(result)
        )
        gevent.idle()
        assert manager.stats().blocked_submitters == 1
        go.set()
        assert killed.wait(2), "kill() waited for a callback nobody owed any more"
        waiter.join(1)
        assert isinstance(waiter.exception, tasker.ManagerStoppedError)  # refused: no callback owed
        assert called == []
        assert running.get(timeout=1) == "killed" and queued.ready()
        gevent.idle()
        res.assert_all_destroyed_once()


class TestRetryPredicateRaises:
    """RetryPolicy.retry_on is user code run in the worker: whatever it raises, nothing crashes."""

    @pytest.mark.parametrize("exc", [ValueError, gevent.Timeout, Custom])
    def test_not_retried_and_the_caller_gets_its_own_error(self, exc: type[BaseException]) -> None:
        res = Resources()
        logger = RecordingLogger()

        def retry_on(error: BaseException) -> bool:
            raise exc()

        policy = tasker.RetryPolicy(retry_on=retry_on)
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, retry=policy, logger=logger))
        failed = manager.submit(lambda ctx, r: (_ for _ in ()).throw(KeyError("own")))
        with pytest.raises(KeyError, match="own"):
            failed.get(timeout=5)
        assert logger.count("error", "RetryPolicy raised") == 1
        assert manager.queue_task(lambda ctx, r: "still served") == "still served"
        assert len(res.created) == 2  # the pool's and the worker's: no replacement was needed
        finish(manager, res)


class Busy(Exception):
    """A transient failure a RetryPolicy retries."""


class TestRetryPolicyUserCode:
    """The rest of a RetryPolicy's user code: the random source and a ``retry_after``
    property. Whatever they raise or return, the caller gets its own error; a cancel()
    or kill() that comes while they run wins."""

    @pytest.mark.parametrize(
        "case",
        ["random raises", "random raises Timeout", "random raises Custom", "random calls stop()",
         "retry_after raises", "nan", "inf", "2.0", "a string"],
    )  # fmt: skip
    def test_not_retried_and_the_caller_gets_its_own_error(self, case: str) -> None:
        res = Resources()
        logger = RecordingLogger()
        draws = {"nan": float("nan"), "inf": float("inf"), "2.0": 2.0, "a string": "0.5"}
        raises: dict[str, BaseException] = {
            "random raises": RuntimeError("the random source broke"),
            "random raises Timeout": gevent.Timeout(),  # a BaseException: it must not end the worker
            "random raises Custom": Custom("the random source's own BaseException"),
        }
        manager: Manager

        def draw() -> Any:
            if case in raises:
                raise raises[case]
            if case == "random calls stop()":
                manager.stop()  # in a worker: RuntimeError, it would wait for itself
            return draws.get(case, 0.5)

        class Hinted(Busy):
            @property
            def retry_after(self) -> float:
                raise ValueError("cannot parse the Retry-After header")

        error = Hinted() if case == "retry_after raises" else Busy()
        policy = tasker.RetryPolicy(retry_on=(Busy,), random=draw)
        manager = TaskManager(res.config(worker_count=1, max_worker_count=1, retry=policy, logger=logger))
        reply = manager.submit(raising(error))
        reply.wait(5)
        assert reply.exception is error
        assert logger.count("error", "RetryPolicy raised") == 1
        assert manager.stats().delayed_tasks == 0
        assert manager.queue_task(lambda ctx, r: "still served") == "still served"
        assert len(res.created) == 2  # the pool's and the worker's: no replacement was needed
        finish(manager, res)

    def test_a_cancel_while_the_predicate_yields_is_not_retried(self) -> None:
        res = Resources()
        in_predicate, go = Event(), Event()
        runs: list[int] = []

        def retry_on(exc: BaseException) -> bool:
            in_predicate.set()
            go.wait()  # looks the error up somewhere
            return True

        def task(ctx: tasker.Context, r: int) -> str:
            runs.append(r)
            raise Busy()

        policy = tasker.RetryPolicy(retry_on=retry_on, base_delay=0.0)
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, retry=policy))
        reply = manager.submit(task)
        assert in_predicate.wait(5)
        assert reply.cancel() is True
        go.set()
        reply.wait(5)
        assert isinstance(reply.exception, Busy)
        assert runs == [runs[0]]  # not run again
        assert manager.stats().delayed_tasks == 0
        finish(manager, res)

    def test_kill_from_the_random_source_leaves_nothing_behind(self) -> None:
        res = Resources()
        clock = FakeClock()
        manager: Manager

        def draw() -> float:
            manager.kill()
            return 0.5

        policy = tasker.RetryPolicy(retry_on=(Busy,), base_delay=10.0, random=draw)
        manager = TaskManager(res.config(worker_count=1, max_worker_count=1, retry=policy, clock=clock))
        reply = manager.submit(raising(Busy()))
        clock.advance(0)
        assert isinstance(reply.exception, tasker.TaskKilledError)
        assert manager._shutdown.finished.is_set()
        assert clock.sleepers == 0  # no retry timer outlives the manager
        gevent.idle()
        assert manager_greenlets(manager) == []
        res.assert_all_destroyed_once()


class TestKillFromTheLoggerWhileThePoolIsDestroyed:
    """Found by the deep hypothesis profile (parent-6): a graceful stop (the parent's) tears
    down; the pool's on_destroy raises; the logger told of it calls kill() in the pool's
    destroyer greenlet. That kill() set ``finished`` with a pool resource not yet destroyed,
    then waited for the watcher, itself waiting for the destroyer: until kill_timeout."""

    def test_finished_only_once_every_resource_is_destroyed(self) -> None:
        clock = FakeClock()
        res = Resources()
        parent = tasker.Context()
        box: list[Manager] = []
        seen_at_kill: list[tuple[int, bool]] = []
        returned = Event()

        def destroy(rid: int) -> None:
            res.destroy(rid)
            raise RuntimeError(f"on_destroy fails for {rid}")

        class KillingLogger(RecordingLogger):
            def error(self, msg: str, *args: Any) -> None:
                super().error(msg, *args)
                manager = box[0]
                in_destroyer = gevent.getcurrent() is manager._shutdown.destroyer
                if "on_destroy" in msg and in_destroyer and not manager._shutdown.kill_called:
                    manager.kill()
                    seen_at_kill.append((manager._pool.available, manager._shutdown.finished.is_set()))
                    returned.set()

        config = attrs.evolve(
            res.config(worker_count=1, max_worker_count=1, resource_pool_size=2, clock=clock, ctx=parent),
            on_destroy=destroy,
            logger=KillingLogger(),
        )
        manager: Manager = TaskManager(config)
        box.append(manager)
        gevent.idle()
        parent.cancel()  # the watcher stops gracefully and tears down: the destroyer starts
        assert manager._shutdown.finished.wait(5)
        assert manager._pool.available == 0, "finished with a pool resource not yet destroyed"
        # The kill() inside the destroyer returns (no wait for the watcher, which waits for it),
        # and only once the pool is empty and torn down.
        assert returned.wait(5), "kill() from the destroyer's logger did not return"
        assert seen_at_kill == [(0, True)]
        gevent.idle()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []
