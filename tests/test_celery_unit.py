"""tasker.contrib.celery in this process: the failure table, batches, the pools, the Celery internal.

The worker-process behaviour is in test_celery_workers.py; here a stand-in for a bound
Celery task records what the integration asks of it.
"""

from __future__ import annotations

import inspect
import pickle
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from celery import Celery  # type: ignore[import-untyped]
from celery.concurrency import get_implementation  # type: ignore[import-untyped]
from celery.exceptions import (  # type: ignore[import-untyped]
    ImproperlyConfigured,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
)

import tasker
from tasker.contrib.celery import Backoff, Integration, _batch, classify
from tasker.contrib.celery._worker import pool_kind


class StubTask:
    """The parts of a bound Celery task the integration uses; ``retry`` records its call."""

    def __init__(self, acks_late: bool = True, retries: int = 0, max_retries: int | None = 3) -> None:
        self.acks_late = acks_late
        self.max_retries = max_retries
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Retry:
        self.retried.append(options)
        return Retry("retry")


def make_integration(**config: Any) -> Integration[str]:
    app = Celery("unit", broker="memory://")
    options: dict[str, Any] = {"on_create": lambda: "resource", "worker_count": 2, **config}
    return Integration(app, lambda: tasker.Config(**options))


@pytest.fixture
def integration() -> Any:
    integration = make_integration()
    integration.start()
    yield integration
    integration.stop()


class TestFailureTable:
    """Each tasker error maps onto requeue, retry with backoff, or an ordinary failure."""

    def test_classify(self) -> None:
        assert classify(tasker.ManagerStoppedError()) == "requeue"
        assert classify(tasker.TaskKilledError()) == "requeue"
        assert classify(tasker.QueueFullError()) == "requeue"
        assert classify(tasker.RetriesExhaustedError(2, ValueError())) == "retry"
        assert classify(tasker.ResourceCreationError()) == "retry"
        assert classify(tasker.TaskTimeoutError()) == "fail"
        assert classify(ValueError()) == "fail"

    def test_value_and_own_errors(self, integration: Integration[str]) -> None:
        task = StubTask()
        assert integration.call(task, lambda ctx, resource: resource + "!") == "resource!"
        with pytest.raises(KeyError):
            integration.call(task, lambda ctx, resource: {"present": 1}["missing"])
        with pytest.raises(tasker.TaskTimeoutError):
            integration.call(task, lambda ctx, resource: gevent.sleep(5), timeout=0.01)
        assert task.retried == []

    def test_stopped_manager_requeues(self, integration: Integration[str]) -> None:
        integration.stop()
        with pytest.raises(Reject) as rejected:
            integration.call(StubTask(acks_late=True), lambda ctx, resource: 1)
        assert rejected.value.requeue is True
        task = StubTask(acks_late=False, retries=3, max_retries=3)
        with pytest.raises(Retry):
            integration.call(task, lambda ctx, resource: 1)
        (retry,) = task.retried
        assert retry["countdown"] == 0 and retry["max_retries"] == 4  # a shutdown uses up no retry
        assert isinstance(retry["exc"], tasker.ManagerStoppedError)
        task = StubTask()
        with pytest.raises(Retry):
            _batch.run(integration, task, lambda ctx, resource, n: n, [1, 2], None, None, None)
        (retry,) = task.retried
        assert retry["args"] == ([1, 2],) and retry["countdown"] == 0

    def test_a_task_object_runs_as_submit_runs_it(self, integration: Integration[str]) -> None:
        class Fetch:
            def execute(self, ctx: tasker.Context, resource: str) -> str:
                return resource + "!"

        assert integration.call(StubTask(), Fetch()) == "resource!"
        with pytest.raises(TypeError, match="have execute"):
            integration.call(StubTask(), object())  # type: ignore[arg-type]

    @pytest.mark.parametrize("error", [tasker.ManagerStoppedError, tasker.TaskKilledError, tasker.QueueFullError])
    def test_the_jobs_own_tasker_error_is_a_failure(self, integration: Integration[str], error: type) -> None:
        """Raised by another manager the job uses, it says nothing about this worker: no requeue loop."""

        def job(ctx: tasker.Context, resource: str) -> None:
            raise error("from another manager")

        task = StubTask(acks_late=True)
        with pytest.raises(error):
            integration.call(task, job)
        assert task.retried == []

        @integration.batch_task(name=f"unit.own_{error.__name__}")
        def batch(ctx: tasker.Context, resource: str, n: int) -> None:
            job(ctx, resource)

        assert batch.run([1]) == [{"error": repr(error("from another manager"))}]

    @pytest.mark.parametrize("name", tasker._errors.__all__)
    def test_errors_reach_the_client_intact(self, name: str) -> None:
        """A result backend pickles the final exception; a client catches it by its type."""
        from celery.utils.serialization import get_pickleable_exception  # type: ignore[import-untyped]

        cls = getattr(tasker, name)
        error = cls(2, ZeroDivisionError("x")) if cls is tasker.RetriesExhaustedError else cls("why")
        assert get_pickleable_exception(error) is error
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error)
        if cls is tasker.RetriesExhaustedError:
            assert copy.attempts == 2 and repr(copy.cause) == repr(copy.__cause__) == "ZeroDivisionError('x')"

    def test_unhealthy_to_the_end_retries_with_backoff(self) -> None:
        integration = make_integration(check_health=lambda exc: False, max_retries=1)
        integration.start()
        try:
            task = StubTask(retries=2)
            with pytest.raises(Retry):
                integration.call(task, lambda ctx, resource: 1 / 0)
        finally:
            integration.stop()
        (retry,) = task.retried
        assert isinstance(retry["exc"], tasker.RetriesExhaustedError)
        assert 2.0 <= retry["countdown"] <= 4.0  # base 1 s doubled twice, the upper half jittered

    def test_backoff(self) -> None:
        backoff = Backoff(1.0, 10.0)
        assert all(0.5 <= backoff.countdown(0) <= 1.0 for _ in range(50))
        assert all(5.0 <= backoff.countdown(30) <= 10.0 for _ in range(50))
        with pytest.raises(ValueError):
            Backoff(0, 1)

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"stop_timeout": 0}, ValueError),
            ({"stop_timeout": -1}, ValueError),
            ({"stop_timeout": float("inf")}, ValueError),
            ({"stop_timeout": "30"}, TypeError),
            ({"restore_interval": 0}, ValueError),
            ({"restore_interval": float("nan")}, ValueError),
            ({"restore_interval": True}, TypeError),
        ],
    )
    def test_bad_durations_are_refused_at_once(self, options: dict[str, Any], error: type) -> None:
        """Not at shutdown, where stop(0) raised inside a signal and no resource was destroyed."""
        (name,) = options
        app = Celery("unit", broker="memory://")
        with pytest.raises(error, match=f"Integration {name} must be"):
            Integration(app, lambda: tasker.Config(on_create=str, worker_count=1), **options)

    @pytest.mark.parametrize(
        ("options", "error"),
        [
            ({"max_in_flight": 0}, ValueError),
            ({"max_in_flight": 2.0}, TypeError),
            ({"max_in_flight": True}, TypeError),
            ({"timeout": 0}, ValueError),
        ],
    )
    def test_bad_batch_options_are_refused_at_once(self, options: dict[str, Any], error: type) -> None:
        (name,) = options
        with pytest.raises(error, match=f"batch_task {name} must be"):
            make_integration().batch_task(name="unit.bad", **options)

    def test_stopped_then_started_again(self) -> None:
        """After stop() or kill() no manager runs: ``.manager`` says so, and start() makes a new one."""
        integration = make_integration()
        first = integration.start()
        assert integration.stop()
        with pytest.raises(tasker.ManagerStoppedError):  # a RuntimeError: a late job is requeued
            _ = integration.manager
        second = integration.start()
        assert second is not first and integration.manager is second
        assert integration.call(StubTask(), lambda ctx, resource: resource) == "resource"
        integration.kill()
        with pytest.raises(tasker.ManagerStoppedError):
            _ = integration.manager
        assert integration.stop()  # nothing runs: True, as documented
        integration.start()
        assert integration.stop()

    def test_no_manager_says_why(self) -> None:
        with pytest.raises(RuntimeError, match="no TaskManager runs in this process"):
            make_integration().call(StubTask(), lambda ctx, resource: 1)
        with pytest.raises(RuntimeError, match="no TaskManager runs in this process"):
            _batch.run(make_integration(), StubTask(), lambda ctx, resource, n: n, [1], None, None, None)


class TestBatch:
    """A batch returns every item's outcome in order, and requeues only its unfinished items."""

    def test_outcomes_in_order(self, integration: Integration[str]) -> None:
        def fn(ctx: tasker.Context, resource: str, n: int) -> int:
            if n % 3 == 0:
                raise ValueError(n)
            gevent.sleep(0.001 * (n % 4))
            return n * 10

        task = integration.batch_task(name="unit.batch")(fn)
        results = task.run(list(range(10)))
        assert results == [{"error": repr(ValueError(n))} if n % 3 == 0 else {"ok": n * 10} for n in range(10)]

    def test_unfinished_items_are_requeued_with_the_finished_outcomes(self, integration: Integration[str]) -> None:
        started = gevent.event.Event()

        def fn(ctx: tasker.Context, resource: str, n: int) -> int:
            if n >= 2:
                started.set()
                gevent.sleep(10)  # killed below
            return n

        task = StubTask()

        def run() -> Any:
            try:
                _batch.run(integration, task, fn, [0, 1, 2, 3, 4], None, None, 3)
            except Retry as retry:
                return retry
            return None

        runner = gevent.spawn(run)
        started.wait()
        integration.kill()
        assert isinstance(runner.get(), Retry)
        (retry,) = task.retried
        assert retry["countdown"] == 0
        assert retry["args"] == ([2, 3, 4],)
        carried = retry["kwargs"]["_tasker_batch"]
        assert carried == {"n": 5, "indices": [2, 3, 4], "done": [[0, {"ok": 0}], [1, {"ok": 1}]]}

        integration2 = make_integration()
        integration2.start()
        try:
            rest = _batch.run(integration2, StubTask(retries=1), lambda c, r, n: n, [2, 3, 4], carried, None, None)
        finally:
            integration2.stop()
        assert rest == [{"ok": n} for n in range(5)]


class TestThrownIntoTheWait:
    """What is thrown into a task waiting on its jobs (a time limit) ends those jobs too."""

    @pytest.mark.parametrize("thrown", [SoftTimeLimitExceeded(), gevent.Timeout()])
    def test_call_cancels_its_job(self, integration: Integration[str], thrown: BaseException) -> None:
        started, ended = gevent.event.Event(), gevent.event.AsyncResult()

        def job(ctx: tasker.Context, resource: str) -> None:
            started.set()
            ended.set(ctx.wait(10))  # True: cancelled

        caller = gevent.spawn(integration.call, StubTask(), job)
        started.wait()
        caller.kill(thrown)
        with pytest.raises(type(thrown)):
            caller.get()
        assert ended.get(timeout=2) is True

    def test_a_cold_shutdown_requeues_whatever_it_throws(
        self, integration: Integration[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """-P solo: Celery's SIGQUIT handler runs in the waiting task and fails there
        (NotImplementedError: solo cannot terminate a job); the job must go back, not fail."""
        from celery.worker import state  # type: ignore[import-untyped]

        started = gevent.event.Event()

        def job(ctx: tasker.Context, resource: str) -> None:
            started.set()
            gevent.sleep(10)  # killed by the integration

        caller = gevent.spawn(integration.call, StubTask(acks_late=True), job)
        started.wait()
        monkeypatch.setattr(state, "should_terminate", 1)  # what the handler sets before it fails
        caller.kill(NotImplementedError("solo does not implement kill_job"))
        with pytest.raises(Reject) as rejected:
            caller.get()
        assert rejected.value.requeue is True
        with pytest.raises(tasker.ManagerStoppedError):  # killed: the job cannot finish after its message went back
            _ = integration.manager

        integration.start()
        started.clear()
        task = StubTask()
        batch = gevent.spawn(_batch.run, integration, task, lambda ctx, resource, n: job(ctx, resource), [1, 2],
                             None, None, None)  # fmt: skip
        started.wait()
        batch.kill(NotImplementedError("solo does not implement kill_job"))
        with pytest.raises(Retry):
            batch.get()
        (retry,) = task.retried
        assert retry["args"] == ([1, 2],) and retry["countdown"] == 0

    def test_batch_cancels_every_pending_item(self) -> None:
        integration = make_integration(worker_count=2, max_worker_count=2)
        integration.start()
        started: list[int] = []
        running = gevent.event.Event()
        cancelled: list[bool] = []

        def fn(ctx: tasker.Context, resource: str, n: int) -> None:
            started.append(n)
            if len(started) == 2:
                running.set()
            cancelled.append(ctx.wait(10))

        try:
            batch = gevent.spawn(_batch.run, integration, StubTask(), fn, list(range(10)), None, None, 6)
            running.wait()
            batch.kill(gevent.Timeout())  # Celery's time_limit under -P gevent
            assert integration.stop(2)  # the running items were cancelled, the queued ones withdrawn
        finally:
            integration.kill()
        assert started == [0, 1] and cancelled == [True, True]


class TestPools:
    """gevent, prefork and solo are served; threads and eventlet are refused with a reason."""

    def test_kinds(self) -> None:
        assert pool_kind(get_implementation("gevent")) == "gevent"
        assert pool_kind(get_implementation("prefork")) == "prefork"
        assert pool_kind(get_implementation("solo")) == "solo"
        with pytest.raises(ImproperlyConfigured, match="cannot serve the 'thread' pool"):
            pool_kind(get_implementation("threads"))
        with pytest.raises(ImproperlyConfigured, match="cannot serve the 'eventlet' pool"):
            pool_kind("celery.concurrency.eventlet:TaskPool")

    def test_broker_pool_is_raised_for_redis(self) -> None:
        from tasker.contrib.celery._worker import broker_pool_check

        app = Celery("unit", broker="redis://127.0.0.1:1/0")
        broker_pool_check(app, 500, fix=True)
        assert app.conf.broker_transport_options["max_connections"] == 510
        memory = Celery("unit", broker="memory://")
        broker_pool_check(memory, 500, fix=True)
        assert "max_connections" not in (memory.conf.broker_transport_options or {})


    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({"visibility_timeout": 4.0}, 10),  # the floor
            ({"visibility_timeout": 60.0}, 60),  # no longer than the visibility timeout
            ({}, 300),  # kombu's default visibility (1 h): kombu's own expire stays
            ({"visibility_timeout": 4.0, "unacked_mutex_expire": 120}, 120),  # the user's own stays
        ],
    )
    def test_restore_mutex_expires_within_the_visibility_timeout(
        self, options: dict[str, float], expected: int
    ) -> None:
        from tasker.contrib.celery._worker import restore_mutex_check

        app = Celery("unit", broker="redis://127.0.0.1:1/0", broker_transport_options=dict(options))
        restore_mutex_check(app)
        from kombu.transport.redis import Channel

        assert "unacked_mutex_expire" in Channel.from_transport_options  # what the channels read
        assert app.conf.broker_transport_options.get("unacked_mutex_expire", Channel.unacked_mutex_expire) == expected
        memory = Celery("unit", broker="memory://")
        restore_mutex_check(memory)
        assert "unacked_mutex_expire" not in (memory.conf.broker_transport_options or {})


class TestCeleryInternals:
    """What the integration relies on beyond Celery's public API is still there."""

    def test_cold_shutdown_flag(self) -> None:
        from celery.apps import worker  # type: ignore[import-untyped]
        from celery.worker import state

        assert state.should_terminate is None  # read by cold_shutdown_started()
        source = inspect.getsource(worker.on_cold_shutdown)
        # Set before the pool joins the greenlets it just killed: they read it then.
        assert source.index("state.should_terminate = True") < source.index("pool.stop()")
        assert "cancel_active_requests" in source
