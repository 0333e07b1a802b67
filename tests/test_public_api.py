"""The public surface of ``tasker``: exported names, the error tree, value types, protocols."""

from __future__ import annotations

import inspect
import logging
import queue
import types
from typing import Any

import attrs
import pytest

import tasker
from tasker.testing import FakeClock

SPEC_NAMES = [
    # 2.1 - 2.4
    "Config",
    "TaskManager",
    "Context",
    "TaskLifecycleTimestamps",
    "TaskMetrics",
    "TaskStats",
    "Logger",
    "MetricsCollector",
    "Collector",
    "Tasker",
    # 2.5 / 2.6
    "TaskerError",
    "ManagerStoppedError",
    "TaskKilledError",
    "RetriesExhaustedError",
    "ResourceCreationError",
    "CancelledError",
    "TaskTimeoutError",
    "QueueFullError",
]

ERROR_PARENTS: list[tuple[str, tuple[type, ...]]] = [
    ("TaskerError", (Exception,)),
    ("ManagerStoppedError", (tasker.TaskerError, RuntimeError)),
    ("TaskKilledError", (tasker.TaskerError,)),
    ("RetriesExhaustedError", (tasker.TaskerError,)),
    ("ResourceCreationError", (tasker.TaskerError,)),
    ("CancelledError", (tasker.TaskerError,)),
    ("TaskTimeoutError", (tasker.TaskerError, TimeoutError)),
    ("QueueFullError", (tasker.TaskerError, queue.Full)),
]


class TestExports:
    """Every name the SPEC promises is importable from ``tasker`` and listed once in ``__all__``."""

    @pytest.mark.parametrize("name", SPEC_NAMES)
    def test_spec_name_is_importable_and_exported(self, name: str) -> None:
        namespace: dict[str, Any] = {}
        exec(f"from tasker import {name}", namespace)
        assert namespace[name] is getattr(tasker, name)
        assert name in tasker.__all__

    def test_all_lists_each_name_once(self) -> None:
        duplicates = {n for n in tasker.__all__ if tasker.__all__.count(n) > 1}
        assert not duplicates

    def test_everything_in_all_exists(self) -> None:
        missing = [n for n in tasker.__all__ if not hasattr(tasker, n)]
        assert not missing

    def test_star_import_gives_exactly_all(self) -> None:
        namespace: dict[str, Any] = {}
        exec("from tasker import *", namespace)
        namespace.pop("__builtins__")
        assert set(namespace) == set(tasker.__all__)

    def test_every_public_attribute_is_in_all(self) -> None:
        public = {
            name
            for name, value in vars(tasker).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }
        assert public <= set(tasker.__all__), public - set(tasker.__all__)

    def test_exports_are_defined_in_private_modules(self) -> None:
        for name in tasker.__all__:
            module = getattr(tasker, name).__module__
            assert module.startswith("tasker._"), (name, module)

    def test_fake_clock_is_public_in_testing(self) -> None:
        import tasker.testing

        assert "FakeClock" in tasker.testing.__all__
        assert tasker.testing.FakeClock is FakeClock


class TestErrorTree:
    """The error classes form the tree of SPEC §2.5 and subclass the builtins they resemble."""

    @pytest.mark.parametrize(("name", "parents"), ERROR_PARENTS)
    def test_parents(self, name: str, parents: tuple[type, ...]) -> None:
        cls = getattr(tasker, name)
        for parent in parents:
            assert issubclass(cls, parent), (cls, parent)

    @pytest.mark.parametrize(("name", "parents"), ERROR_PARENTS)
    def test_is_an_exception_not_a_base_exception_only(self, name: str, parents: tuple[type, ...]) -> None:
        assert issubclass(getattr(tasker, name), Exception)

    def test_errors_are_siblings(self) -> None:
        names = [n for n, _ in ERROR_PARENTS if n != "TaskerError"]
        for a in names:
            for b in names:
                if a != b:
                    assert not issubclass(getattr(tasker, a), getattr(tasker, b)), (a, b)

    def test_manager_stopped_caught_as_runtime_error(self) -> None:
        with pytest.raises(RuntimeError):
            raise tasker.ManagerStoppedError("stopped")

    def test_task_timeout_caught_as_timeout_error(self) -> None:
        with pytest.raises(TimeoutError):
            raise tasker.TaskTimeoutError("late")

    def test_queue_full_caught_as_queue_full(self) -> None:
        with pytest.raises(queue.Full):
            raise tasker.QueueFullError("full")

    def test_retries_exhausted_carries_attempts_and_cause(self) -> None:
        cause = ConnectionError("reset")
        error = tasker.RetriesExhaustedError(4, cause)
        assert error.attempts == 4
        assert error.cause is cause
        assert error.__cause__ is cause
        assert "4" in str(error)

    def test_retries_exhausted_chains_when_raised(self) -> None:
        cause = ValueError("bad")
        with pytest.raises(tasker.RetriesExhaustedError) as info:
            raise tasker.RetriesExhaustedError(2, cause)
        assert info.value.__cause__ is cause


def _stamps() -> tasker.TaskLifecycleTimestamps:
    return tasker.TaskLifecycleTimestamps(1.0, 2.0, 3.0)


def _stats() -> tasker.TaskStats:
    return tasker.TaskStats(
        base_workers=1,
        active_workers=1,
        burst_workers=0,
        queued_tasks=0,
        priority_tasks=0,
        available_resources=1,
    )


class TestFrozenValues:
    """Snapshots and timestamps are immutable attrs values."""

    @pytest.mark.parametrize(
        ("make", "field"),
        [
            (_stats, "queued_tasks"),
            (_stats, "available_resources"),
            (tasker.TaskMetrics, "p99_execution_time"),
            (tasker.TaskMetrics, "total_tasks_completed"),
        ],
    )
    def test_attrs_values_are_frozen(self, make: Any, field: str) -> None:
        value = make()
        before = getattr(value, field)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(value, field, 123)
        assert getattr(value, field) == before

    @pytest.mark.parametrize("field", ["queued_at", "started_at", "finished_at"])
    def test_timestamps_are_immutable(self, field: str) -> None:
        # A NamedTuple since the hot-path commit (see _types.py): assignment raises
        # AttributeError, of which attrs' FrozenInstanceError is a subclass.
        stamps = _stamps()
        before = getattr(stamps, field)
        with pytest.raises(AttributeError):
            setattr(stamps, field, 123.0)
        assert getattr(stamps, field) == before

    def test_frozen_values_compare_and_hash_by_value(self) -> None:
        assert _stamps() == _stamps()
        assert hash(_stamps()) == hash(_stamps())
        assert _stats() == _stats()

    def test_timestamps_fields_in_order(self) -> None:
        stamps = tasker.TaskLifecycleTimestamps(1.0, 2.0, 3.0)
        assert (stamps.queued_at, stamps.started_at, stamps.finished_at) == (1.0, 2.0, 3.0)
        by_name = tasker.TaskLifecycleTimestamps(queued_at=1.0, started_at=2.0, finished_at=3.0)
        assert by_name == stamps

    def test_task_metrics_fields(self) -> None:
        expected = {
            "average_execution_time",
            "min_execution_time",
            "max_execution_time",
            "p95_execution_time",
            "p99_execution_time",
            "average_wait_time",
            "task_arrival_rate",
            "task_completion_rate",
            "total_tasks_completed",
            "total_tasks_failed",
            "total_tasks_retried",
            "success_rate",
            "failure_rate",
            "total_tasks_cancelled",
            "total_transient_retries",
        }
        assert {f.name for f in attrs.fields(tasker.TaskMetrics)} == expected

    def test_task_stats_fields(self) -> None:
        names = {f.name for f in attrs.fields(tasker.TaskStats)}
        assert {
            "base_workers",
            "active_workers",
            "burst_workers",
            "queued_tasks",
            "priority_tasks",
            "available_resources",
            "busy_workers",
        } <= names


def _protocol_methods(protocol: type) -> set[str]:
    return {n for n, v in vars(protocol).items() if not n.startswith("_") and callable(v)}


class TestProtocols:
    """The plug-in protocols are satisfied by the objects the SPEC names."""

    def test_logger_protocol_methods(self) -> None:
        assert _protocol_methods(tasker.Logger) == {"debug", "info", "warning", "error"}

    @pytest.mark.parametrize("method", ["debug", "info", "warning", "error"])
    def test_logging_logger_fits_logger(self, method: str) -> None:
        logger = logging.getLogger("tasker.test_public_api")
        inspect.signature(getattr(logger, method)).bind("msg %s %s", 1, 2)

    def test_config_accepts_a_logging_logger(self) -> None:
        logger = logging.getLogger("tasker.test_public_api")
        config = tasker.Config(on_create=object, worker_count=1, logger=logger)
        assert config.logger is logger

    def test_metrics_collector_protocol_methods(self) -> None:
        assert _protocol_methods(tasker.MetricsCollector) == {
            "record_arrival",
            "record_completion",
            "record_failure",
            "record_retry",
            "metrics",
        }

    def test_collector_fits_metrics_collector(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        for name in _protocol_methods(tasker.MetricsCollector):
            wanted = inspect.signature(getattr(tasker.MetricsCollector, name))
            got = inspect.signature(getattr(collector, name))
            assert list(got.parameters) == list(wanted.parameters)[1:], name  # minus self
        collector.record_arrival()
        collector.record_completion(_stamps())
        collector.record_failure(_stamps())
        collector.record_retry()
        assert isinstance(collector.metrics(), tasker.TaskMetrics)

    def test_config_accepts_a_collector(self) -> None:
        collector = tasker.Collector()
        config = tasker.Config(on_create=object, worker_count=1, collector=collector)
        assert config.collector is collector

    def test_tasker_protocol_is_runtime_checkable(self) -> None:
        class Job:
            def execute(self, ctx: tasker.Context, resource: int) -> int:
                return resource

        assert isinstance(Job(), tasker.Tasker)
        assert not isinstance(object(), tasker.Tasker)

    def test_clocks_fit_the_clock_protocol(self) -> None:
        for clock in (tasker.MonotonicClock(), FakeClock()):
            config = tasker.Config(on_create=object, worker_count=1, clock=clock)
            assert config.clock is clock


class TestLogging:
    """Importing tasker installs a NullHandler on the "tasker" logger, as libraries should."""

    def test_null_handler_installed(self) -> None:
        handlers = logging.getLogger("tasker").handlers
        assert any(isinstance(h, logging.NullHandler) for h in handlers)

    def test_no_other_handler_installed(self) -> None:
        handlers = logging.getLogger("tasker").handlers
        assert all(isinstance(h, logging.NullHandler) for h in handlers)
