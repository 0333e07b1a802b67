"""What tasker logs, at which level, lazily formatted; and loggers that are not logging.Logger."""

from __future__ import annotations

import logging
from typing import Any

import gevent
import pytest
from helpers import Gate, Manager, RecordingLogger, Resources, Unhealthy, hold_the_worker

import tasker
from tasker import RetriesExhaustedError, TaskManager
from tasker.testing import FakeClock


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, capturing the "tasker" logger at every level from DEBUG up."""
    caplog.set_level(logging.DEBUG, logger="tasker")
    return caplog


def logged(log: pytest.LogCaptureFixture, level: int, fragment: str) -> list[logging.LogRecord]:
    """The "tasker" records at ``level`` whose unformatted message contains ``fragment``."""
    found = [r for r in log.records if r.name == "tasker" and r.levelno == level and fragment in r.msg]
    for record in found:
        # Lazy formatting: the template and its arguments travel separately.
        assert "%" in record.msg and record.args, record
    return found


class FailsOnce:
    """A task that fails unhealthily on its first run and returns "ok" on the next."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, ctx: tasker.Context, resource: int) -> str:
        self.runs += 1
        if self.runs == 1:
            raise Unhealthy("connection reset")
        return "ok"


def always_unhealthy(ctx: tasker.Context, resource: int) -> None:
    raise Unhealthy("still broken")


class TestUnhealthyFailures:
    """Retiring a worker and exhausting retries are WARNINGs that carry the exception."""

    def test_retired_worker_is_a_warning(self, log: pytest.LogCaptureFixture) -> None:
        resources = Resources()
        with Manager(resources.config()) as manager:
            assert manager.queue_task(FailsOnce()) == "ok"
        (record,) = logged(log, logging.WARNING, "retired a worker")
        assert isinstance(record.args, tuple)
        assert isinstance(record.args[0], Unhealthy)
        assert "connection reset" in record.getMessage()

    def test_exhausted_retries_is_a_warning(self, log: pytest.LogCaptureFixture) -> None:
        resources = Resources()
        with Manager(resources.config(max_retries=2)) as manager:
            with pytest.raises(RetriesExhaustedError):
                manager.queue_task(always_unhealthy)
        (record,) = logged(log, logging.WARNING, "task failed after")
        assert isinstance(record.args, tuple)
        assert record.args[0] == 3
        assert isinstance(record.args[1], Unhealthy)
        assert len(logged(log, logging.WARNING, "retired a worker")) == 3

    def test_healthy_failures_are_not_logged(self, log: pytest.LogCaptureFixture) -> None:
        resources = Resources()
        with Manager(resources.config()) as manager:
            with pytest.raises(ValueError):
                manager.queue_task(lambda ctx, r: int("x"))
        assert [r for r in log.records if r.name == "tasker" and r.levelno >= logging.WARNING] == []


class TestCreateStreaks:
    """A failing on_create logs one WARNING per streak of failures and an INFO on recovery."""

    def test_one_warning_per_streak_and_info_on_recovery(self, log: pytest.LogCaptureFixture) -> None:
        clock = FakeClock()
        # Calls 1-2 make the base workers; 3-5 are the first streak, 7 the second.
        resources = Resources(fail_on={3, 4, 5, 7})
        config = resources.config(max_worker_count=2, resource_pool_size=0, clock=clock)
        manager: Manager = TaskManager(config)
        assert manager.submit(FailsOnce()).get() == "ok"  # the other base worker retries it
        gevent.idle()
        assert resources.calls == 3
        clock.advance(0.05)  # backoff 0.05 s, then 0.1 s, then 0.2 s
        clock.advance(0.1)
        assert resources.calls == 5
        assert not logged(log, logging.INFO, "works again")
        clock.advance(0.2)
        assert resources.calls == 6
        (recovered,) = logged(log, logging.INFO, "works again")
        assert recovered.args == (3,)
        assert len(logged(log, logging.WARNING, "on_create failed")) == 1

        assert manager.submit(FailsOnce()).get() == "ok"  # second streak: call 7 fails
        gevent.idle()
        clock.advance(0.05)
        assert resources.calls == 8
        streaks = logged(log, logging.WARNING, "on_create failed")
        assert len(streaks) == 2
        assert all(isinstance(r.args, tuple) and isinstance(r.args[0], ConnectionError) for r in streaks)
        assert [r.args for r in logged(log, logging.INFO, "works again")] == [(3,), (1,)]
        manager.stop()
        resources.assert_all_destroyed_once()


class TestScaling:
    """Starting burst workers is INFO; retiring idle ones is DEBUG."""

    def test_burst_up_and_down(self, log: pytest.LogCaptureFixture) -> None:
        clock = FakeClock()
        resources = Resources()
        config = resources.config(worker_count=1, max_worker_count=3, resource_pool_size=0, clock=clock)
        manager: Manager = TaskManager(config)
        gate = Gate()
        replies = [manager.submit(gate) for _ in range(4)]
        gate.started.wait()
        clock.advance(0.1)
        (started,) = logged(log, logging.INFO, "burst workers")
        assert started.args == (1, 3)  # one worker (step ceil((3-1)/2)) for a backlog of 3
        gate.release.set()
        assert [r.get() for r in replies] == ["gate"] * 4
        assert not logged(log, logging.DEBUG, "retired")
        clock.advance(1.1)  # past the default linger of 10 * burst_interval
        (retired,) = logged(log, logging.DEBUG, "retired")
        assert retired.args == (1,)
        assert manager.stats().burst_workers == 0
        manager.stop()


class TestUserCodeErrors:
    """Errors raised by user callbacks are logged at ERROR with the exception, never lost."""

    def test_raising_callback_is_an_error(self, log: pytest.LogCaptureFixture) -> None:
        resources = Resources()
        error = ValueError("callback broke")

        def callback(result: Any, exc: BaseException | None) -> None:
            raise error

        manager: Manager = TaskManager(resources.config())
        manager.queue_task_with_callback(lambda ctx, r: 1, callback)
        manager.stop()  # waits for pending callbacks
        (record,) = logged(log, logging.ERROR, "callback")
        assert record.args == (callback, error)

    def test_raising_check_health_and_on_destroy_are_errors(self, log: pytest.LogCaptureFixture) -> None:
        def check_health(exc: BaseException) -> bool:
            raise RuntimeError("check_health broke")

        def on_destroy(resource: int) -> None:
            raise RuntimeError("on_destroy broke")

        config = tasker.Config(
            on_create=lambda: 1, on_destroy=on_destroy, check_health=check_health, worker_count=1, max_retries=0
        )
        with Manager(config) as manager:
            with pytest.raises(Unhealthy):
                manager.queue_task(always_unhealthy)
        assert len(logged(log, logging.ERROR, "check_health raised")) == 1
        # The retired worker's resource, its replacement's and the pool's one.
        assert len(logged(log, logging.ERROR, "on_destroy raised")) == 3

    def test_stop_timeout_escalation_is_a_warning(self, log: pytest.LogCaptureFixture) -> None:
        clock = FakeClock()
        manager: Manager = TaskManager(Resources().config(clock=clock))
        _, reply = hold_the_worker(manager)
        stopping = gevent.spawn(manager.stop, 1.5)
        gevent.idle()
        clock.advance(1.5)
        assert stopping.get() is False
        with pytest.raises(tasker.TaskKilledError):
            reply.get()
        (record,) = logged(log, logging.WARNING, "did not drain")
        assert record.args == (1.5,)


class TestCustomLogger:
    """Config.logger takes any object with debug/info/warning/error(msg, *args)."""

    def test_messages_go_to_the_custom_logger_only(self, log: pytest.LogCaptureFixture) -> None:
        logger = RecordingLogger()
        resources = Resources()
        with Manager(resources.config(logger=logger)) as manager:
            assert manager.queue_task(FailsOnce()) == "ok"
            manager.queue_task_with_callback(lambda ctx, r: 1, lambda result, exc: 1 / 0)
        levels = [level for level, _, _ in logger.calls]
        assert levels == ["warning", "error"]
        _, msg, args = logger.calls[0]
        assert "retired a worker" in msg and isinstance(args[0], Unhealthy)
        assert msg % args == f"tasker: retired a worker after {args[0]!r}"
        assert isinstance(logger.calls[1][2][1], ZeroDivisionError)
        assert [r for r in log.records if r.name == "tasker"] == []

    def test_a_logger_without_the_methods_is_refused(self) -> None:
        class PrintOnly:
            def info(self, msg: str, *args: Any) -> None:
                print(msg % args)

        with pytest.raises(TypeError, match="debug, warning, error"):
            Resources().config(logger=PrintOnly())

    def test_a_raising_logger_never_harms_the_manager(self, log: pytest.LogCaptureFixture) -> None:
        class Broken(RecordingLogger):
            def warning(self, msg: str, *args: Any) -> None:
                raise OSError("log sink is gone")

        resources = Resources()
        with Manager(resources.config(logger=Broken())) as manager:
            assert manager.queue_task(FailsOnce()) == "ok"
        (record,) = logged(log, logging.ERROR, "the logger raised")
        assert isinstance(record.args, tuple) and isinstance(record.args[0], OSError)
        resources.assert_all_destroyed_once()
