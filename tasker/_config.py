"""``Config``: the immutable, validated settings of one TaskManager."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import attrs

from ._clock import Clock
from ._context import Context
from ._keys import KeyLimits
from ._ratelimit import RateLimit
from ._retry import RetryPolicy
from ._types import Logger, MetricsCollector

__all__ = ["Config", "refuse_async", "seconds_ok"]

R = TypeVar("R")


def refuse_async(what: str, fn: Any) -> None:
    """Refuse an ``async def``: tasker calls its hooks and tasks, and would never await one."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "execute", None)):
        raise TypeError(f"{what} must be a plain function, got the coroutine function {fn!r} (tasker never awaits)")


def _callable(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"Config.{attr.name} must be callable, got {value!r}")
    refuse_async(f"Config.{attr.name}", value)


def _frozen(value: Any) -> Any:
    """A copy of a mapping that nobody can change (the caller's own may change later)."""
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


def _optional_callable(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _callable(inst, attr, value)


def _int(minimum: int, optional: bool = False) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"Config.{attr.name} must be an int, got {value!r}")
        if value < minimum:
            raise ValueError(f"Config.{attr.name} must be >= {minimum}, got {value!r}")

    return check


def seconds_ok(value: Any) -> bool:
    """Whether ``value`` is a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return math.isfinite(value) and value > 0


def _seconds(optional: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"Config.{attr.name} must be a number of seconds, got {value!r}")
        if not seconds_ok(value):
            raise ValueError(f"Config.{attr.name} must be a finite number of seconds > 0, got {value!r}")

    return check


def _instance(kind: type, what: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"Config.{attr.name} must be {what} or None, got {value!r}")

    return check


def _key_limits(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"Config.key_limits must be a mapping of key to tasker.KeyLimits, got {value!r}")
    for key, limits in value.items():
        if not isinstance(limits, KeyLimits):
            raise TypeError(f"Config.key_limits[{key!r}] must be a tasker.KeyLimits, got {limits!r}")


def _has_methods(*names: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, type):  # its methods are there, but unbound: it would fail later
            raise TypeError(f"Config.{attr.name} must be an instance, got the class {value!r}")
        missing = [n for n in names if not callable(getattr(value, n, None))]
        if missing:
            raise TypeError(f"Config.{attr.name} lacks {', '.join(missing)}(): got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Config(Generic[R]):
    """Settings of a :class:`~tasker.TaskManager`; every field is checked at construction.

    Raises:
        TypeError: a field has the wrong type (``on_create`` missing or not callable...).
        ValueError: a number is out of range.
    """

    on_create: Callable[[], R] = attrs.field(validator=_callable)
    """Creates one resource: in the constructor for the pool and the base workers, in its
    own greenlet for a replacement or burst worker, in the caller's for a run_task temporary."""
    worker_count: int = attrs.field(validator=_int(1))
    """Base workers, always running (> 0)."""
    on_destroy: Callable[[R], object] | None = attrs.field(default=None, validator=_optional_callable)
    """Releases one resource; called exactly once for every resource ``on_create`` made."""
    ctx: Context | None = attrs.field(default=None, validator=_instance(Context, "a tasker.Context"))
    """Parent context: cancelling it starts a graceful stop."""
    check_health: Callable[[BaseException], bool] | None = attrs.field(
        default=None, validator=_optional_callable
    )
    """``check_health(exc)`` False: the worker's resource is bad; retire and retry."""
    max_worker_count: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    """Base + burst ceiling; None means ``2 * worker_count``."""
    burst_interval: float = attrs.field(default=0.1, validator=_seconds(optional=False))
    """Seconds between two looks of the scaler."""
    max_retries: int = attrs.field(default=3, validator=_int(0))
    """Redeliveries after unhealthy failures (0: never redeliver)."""
    resource_pool_size: int | None = attrs.field(default=None, validator=_int(0, optional=True))
    """Resources kept for ``run_task``; None means ``worker_count``, 0 no pool."""
    logger: Logger | None = attrs.field(
        default=None, validator=_has_methods("debug", "info", "warning", "error")
    )
    """Where to log; None means ``logging.getLogger("tasker")``."""
    collector: MetricsCollector | None = attrs.field(
        default=None,
        validator=_has_methods(
            "record_arrival", "record_completion", "record_failure", "record_retry", "metrics"
        ),
    )
    """Metrics sink; None means a new :class:`~tasker.Collector`."""
    task_timeout: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    """Default bound in seconds on one run of a submitted task; None means none. (A
    ``run_task`` task runs in your greenlet: bound it with your own ``gevent.Timeout``.)"""
    max_queue_size: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    """Room in each lane; None means unbounded."""
    burst_linger: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    """Seconds a burst worker stays idle before it retires; None means ``10 * burst_interval``."""
    clock: Clock | None = attrs.field(default=None, validator=_has_methods("now", "sleep", "call_later"))
    """Time source; None means the real clock. ``tasker.testing.FakeClock`` for tests."""
    kill_timeout: float | None = attrs.field(default=5.0, validator=_seconds(optional=True))
    """Seconds ``kill()`` (and a ``stop()`` once it has drained or escalated) waits for the user
    code it interrupted and for ``on_destroy`` calls to end before it gives up on them and
    returns; None waits as long as they take."""

    key_concurrency: int | None = attrs.field(default=None, validator=_int(1, optional=True))
    """Messages of one key (``submit(..., key=...)``) in flight at once; None: unlimited."""
    key_rate: RateLimit | None = attrs.field(default=None, validator=_instance(RateLimit, "a tasker.RateLimit"))
    """Token-bucket rate of each key's dispatches; None: unlimited."""
    key_limits: Mapping[Hashable, KeyLimits] = attrs.field(
        factory=dict, converter=_frozen, validator=_key_limits, hash=False
    )
    """Per-key overrides of ``key_concurrency`` and ``key_rate``."""
    rate_limit: RateLimit | None = attrs.field(default=None, validator=_instance(RateLimit, "a tasker.RateLimit"))
    """Token-bucket rate of all dispatches together; None: unlimited."""
    retry: RetryPolicy | None = attrs.field(default=None, validator=_instance(RetryPolicy, "a tasker.RetryPolicy"))
    """Retries of transient (healthy) failures, for every submission; None: none."""

    def __attrs_post_init__(self) -> None:
        if self.max_worker_count is not None and self.max_worker_count < self.worker_count:
            raise ValueError(
                f"Config.max_worker_count must be >= worker_count ({self.worker_count}), "
                f"got {self.max_worker_count!r}"
            )
