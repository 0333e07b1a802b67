"""``tasker.Config``: validation at construction, immutability and defaults."""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import pytest
from helpers import Manager, Resources

import tasker
from tasker.testing import FakeClock


def make(**kwargs: Any) -> tasker.Config[Any]:
    kwargs.setdefault("on_create", object)
    kwargs.setdefault("worker_count", 2)
    return tasker.Config(**kwargs)


class _NotALogger:
    def debug(self, msg: str, *args: Any) -> None:
        pass

    def info(self, msg: str, *args: Any) -> None:
        pass


class _HalfCollector:
    def record_arrival(self) -> None:
        pass

    def metrics(self) -> tasker.TaskMetrics:
        return tasker.TaskMetrics()


class _ClockWithoutTimers:
    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        pass


INT_FIELDS = ["worker_count", "max_worker_count", "max_retries", "resource_pool_size", "max_queue_size"]
SECONDS_FIELDS = ["burst_interval", "task_timeout", "burst_linger"]


def _assert_names(excinfo: pytest.ExceptionInfo[BaseException], field: str, value: Any) -> None:
    message = str(excinfo.value)
    assert field in message, message
    assert repr(value) in message, message


class TestTypeErrors:
    """Values of the wrong type raise TypeError naming the field and the value."""

    def test_missing_on_create(self) -> None:
        with pytest.raises(TypeError, match="on_create"):
            tasker.Config(worker_count=1)  # type: ignore[call-arg]

    def test_missing_worker_count(self) -> None:
        with pytest.raises(TypeError, match="worker_count"):
            tasker.Config(on_create=object)  # type: ignore[call-arg]

    @pytest.mark.parametrize("field", ["on_create", "on_destroy", "check_health"])
    @pytest.mark.parametrize("value", [42, "make", object()])
    def test_not_callable(self, field: str, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(**{field: value})
        _assert_names(excinfo, field, value)

    @pytest.mark.parametrize("field", INT_FIELDS)
    @pytest.mark.parametrize("value", ["2", 2.0, 1.5, True, False])
    def test_int_fields_reject_non_ints(self, field: str, value: Any) -> None:
        kwargs: dict[str, Any] = {field: value}
        if field == "max_worker_count":
            kwargs["worker_count"] = 1
        with pytest.raises(TypeError) as excinfo:
            make(**kwargs)
        _assert_names(excinfo, field, value)

    @pytest.mark.parametrize("field", SECONDS_FIELDS)
    @pytest.mark.parametrize("value", ["0.1", True, [0.1]])
    def test_seconds_fields_reject_non_numbers(self, field: str, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(**{field: value})
        _assert_names(excinfo, field, value)

    @pytest.mark.parametrize("field", ["on_create", "worker_count", "burst_interval", "max_retries"])
    def test_required_fields_reject_none(self, field: str) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(**{field: None})
        _assert_names(excinfo, field, None)

    @pytest.mark.parametrize("value", ["ctx", object(), FakeClock()])
    def test_ctx_must_be_a_context(self, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(ctx=value)
        _assert_names(excinfo, "ctx", value)

    @pytest.mark.parametrize("value", [object(), _NotALogger(), "logger"])
    def test_logger_lacking_methods(self, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(logger=value)
        _assert_names(excinfo, "logger", value)
        assert "warning" in str(excinfo.value)
        assert "error" in str(excinfo.value)

    @pytest.mark.parametrize("value", [object(), _HalfCollector(), logging.getLogger("tasker")])
    def test_collector_lacking_methods(self, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(collector=value)
        _assert_names(excinfo, "collector", value)
        assert "record_completion" in str(excinfo.value)

    @pytest.mark.parametrize("value", [object(), _ClockWithoutTimers(), 12.0])
    def test_clock_lacking_methods(self, value: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            make(clock=value)
        _assert_names(excinfo, "clock", value)
        assert "call_later" in str(excinfo.value)


class TestValueErrors:
    """Numbers out of range raise ValueError naming the field and the value."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("worker_count", 0),
            ("worker_count", -3),
            ("burst_interval", 0),
            ("burst_interval", 0.0),
            ("burst_interval", -0.1),
            ("burst_interval", math.nan),
            ("max_retries", -1),
            ("resource_pool_size", -1),
            ("task_timeout", 0),
            ("task_timeout", -1.0),
            ("task_timeout", math.nan),
            ("max_queue_size", 0),
            ("max_queue_size", -5),
            ("burst_linger", 0.0),
            ("burst_linger", -2),
            ("burst_linger", math.nan),
        ],
    )
    def test_out_of_range(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError) as excinfo:
            make(**{field: value})
        _assert_names(excinfo, field, value)

    @pytest.mark.parametrize(("worker_count", "max_worker_count"), [(2, 1), (5, 4), (3, 0)])
    def test_max_worker_count_below_worker_count(self, worker_count: int, max_worker_count: int) -> None:
        with pytest.raises(ValueError) as excinfo:
            make(worker_count=worker_count, max_worker_count=max_worker_count)
        _assert_names(excinfo, "max_worker_count", max_worker_count)

    def test_evolve_is_validated_too(self) -> None:
        config = make()
        with pytest.raises(ValueError, match="worker_count"):
            attrs.evolve(config, worker_count=0)


class TestAccepted:
    """Boundary values inside the ranges are accepted as given."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("worker_count", 1),
            ("max_retries", 0),
            ("resource_pool_size", 0),
            ("max_queue_size", 1),
            ("burst_interval", 1),
            ("burst_interval", 1e-6),
            ("task_timeout", 0.001),
            ("task_timeout", 5),
            ("burst_linger", 0.5),
        ],
    )
    def test_boundaries(self, field: str, value: Any) -> None:
        assert getattr(make(**{field: value}), field) == value

    def test_max_worker_count_equal_to_worker_count(self) -> None:
        assert make(worker_count=3, max_worker_count=3).max_worker_count == 3

    def test_everything_given(self) -> None:
        ctx = tasker.Context()
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        logger = logging.getLogger("tasker.test_config")
        config = tasker.Config(
            on_create=object,
            on_destroy=print,
            worker_count=4,
            ctx=ctx,
            check_health=bool,
            max_worker_count=9,
            burst_interval=0.5,
            max_retries=7,
            resource_pool_size=2,
            logger=logger,
            collector=collector,
            task_timeout=3.0,
            max_queue_size=100,
            burst_linger=6.0,
            clock=clock,
        )
        assert (config.on_destroy, config.ctx, config.check_health) == (print, ctx, bool)
        assert (config.max_worker_count, config.burst_interval, config.max_retries) == (9, 0.5, 7)
        assert (config.resource_pool_size, config.logger, config.collector) == (2, logger, collector)
        assert (config.task_timeout, config.max_queue_size, config.burst_linger, config.clock) == (
            3.0,
            100,
            6.0,
            clock,
        )

    def test_fields_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            tasker.Config(object, 1)  # type: ignore[call-arg]


class TestFrozen:
    """A Config cannot be changed after construction."""

    @pytest.mark.parametrize("field", ["worker_count", "on_create", "max_retries", "clock"])
    def test_assignment_raises(self, field: str) -> None:
        config = make()
        before = getattr(config, field)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(config, field, 99)
        assert getattr(config, field) is before

    def test_equal_configs_hash_alike(self) -> None:
        assert make(worker_count=3) == make(worker_count=3)
        assert hash(make(worker_count=3)) == hash(make(worker_count=3))


class TestKeyLimitsAreCopied:
    """Regression: Config kept the caller's dict, which could change after validation."""

    def test_the_callers_dict_changing_later_changes_nothing(self) -> None:
        limits: dict[Any, Any] = {"a": tasker.KeyLimits(concurrency=1)}
        config = tasker.Config(on_create=object, worker_count=1, key_limits=limits)
        limits["a"] = 3
        limits["b"] = tasker.KeyLimits(concurrency=2)
        assert dict(config.key_limits) == {"a": tasker.KeyLimits(concurrency=1)}
        with pytest.raises(TypeError):
            config.key_limits["a"] = 3  # type: ignore[index]


class TestDefaults:
    """Optional fields default as SPEC §2.1 says, and the manager reads the None defaults right."""

    def test_field_defaults(self) -> None:
        config = make(worker_count=3)
        assert config.on_destroy is None
        assert config.ctx is None
        assert config.check_health is None
        assert config.max_worker_count is None
        assert config.burst_interval == 0.1
        assert config.max_retries == 3
        assert config.resource_pool_size is None
        assert config.logger is None
        assert config.collector is None
        assert config.task_timeout is None
        assert config.max_queue_size is None
        assert config.burst_linger is None
        assert config.clock is None

    def test_pool_defaults_to_worker_count(self) -> None:
        resources = Resources()
        with Manager(resources.config(worker_count=3, max_worker_count=3)) as manager:
            stats = manager.stats()
            assert stats.available_resources == 3
            assert stats.base_workers == 3
            assert len(resources.created) == 6
        resources.assert_all_destroyed_once()

    def test_collector_defaults_to_a_new_collector(self) -> None:
        resources = Resources()
        config = resources.config(worker_count=1, max_worker_count=1)
        with Manager(config) as first, Manager(config) as second:
            assert first.queue_task(lambda ctx, r: r) is not None
            assert first.metrics().total_tasks_completed == 1
            assert second.metrics().total_tasks_completed == 0
