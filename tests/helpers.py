"""Resources and tasks that record what happened to them, for the tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
import gevent
from gevent.event import Event

import tasker
from tasker import TaskManager

# A manager of the tests' int resources; calling it (``Manager(config)``) types what mypy cannot infer.
Manager = TaskManager[int, Any]

T = TypeVar("T")


class Unhealthy(Exception):
    """Raised by tasks to say their resource is bad."""


class Healthy(Exception):
    """An ordinary task error: the resource is fine."""


def check_health(exc: BaseException) -> bool:
    return not isinstance(exc, Unhealthy)


def one_worker(resources: Resources, **kwargs: Any) -> tasker.Config[int]:
    """One base worker, no bursting, no run_task pool: resource ids count the workers."""
    kwargs.setdefault("worker_count", 1)
    kwargs.setdefault("max_worker_count", kwargs["worker_count"])
    kwargs.setdefault("resource_pool_size", 0)
    return resources.config(**kwargs)


def the_resource(ctx: tasker.Context, resource: int) -> int:
    """A task that returns the resource it ran with."""
    return resource


def returning(value: Any) -> Callable[[tasker.Context, Any], Any]:
    """A task that returns ``value``."""
    return lambda ctx, resource: value


def record(order: list[T], name: T) -> Callable[[tasker.Context, object], T]:
    """A task that appends ``name`` to ``order`` and returns it."""

    def task(ctx: tasker.Context, resource: object) -> T:
        order.append(name)
        return name

    return task


def raising(exc: BaseException) -> Callable[[tasker.Context, Any], Any]:
    """A task that raises ``exc`` (the very instance) on every run."""

    def task(ctx: tasker.Context, resource: Any) -> Any:
        raise exc

    return task


def catching(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; return its exception instead of raising it (keeps gevent from printing it)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


@attrs.define
class Resources:
    """An on_create/on_destroy pair that counts every resource it makes and destroys."""

    fail_on: set[int] = attrs.field(factory=set)  # 1-based on_create calls that raise
    created: list[int] = attrs.field(factory=list)
    destroyed: list[int] = attrs.field(factory=list)
    calls: int = 0
    _ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))

    def create(self) -> int:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError(f"on_create call {self.calls} fails")
        rid = next(self._ids)
        self.created.append(rid)
        return rid

    def destroy(self, rid: int) -> None:
        self.destroyed.append(rid)

    def assert_all_destroyed_once(self) -> None:
        assert sorted(self.destroyed) == sorted(self.created), (self.created, self.destroyed)

    def config(self, **kwargs: Any) -> tasker.Config[int]:
        kwargs.setdefault("worker_count", 2)
        kwargs.setdefault("check_health", check_health)
        return tasker.Config(on_create=self.create, on_destroy=self.destroy, **kwargs)


@attrs.define
class SlowClose(Resources):
    """Resources whose ``on_destroy`` yields, as a close doing I/O does, and records an interrupt."""

    interrupted: list[int] = attrs.field(factory=list)

    def destroy(self, rid: int) -> None:
        try:
            for _ in range(3):
                gevent.sleep(0)
        except BaseException:
            self.interrupted.append(rid)
            raise
        super().destroy(rid)


@attrs.define
class Gate:
    """A task that signals when it starts and blocks until released."""

    started: Event = attrs.field(factory=Event)
    release: Event = attrs.field(factory=Event)
    value: Any = "gate"

    def __call__(self, ctx: tasker.Context, resource: Any) -> Any:
        self.started.set()
        self.release.wait()
        return self.value


def hold_the_worker(manager: TaskManager[Any, Any]) -> tuple[Gate, tasker.TaskResult]:
    """Occupy one of the manager's workers with a Gate, running; with one worker, what comes next queues."""
    gate = Gate()
    reply = manager.submit(gate)
    assert gate.started.wait(5)
    return gate, reply


class RecordingLogger:
    """A Logger (not a logging.Logger: just the four methods) that keeps every call.

    ``records`` holds (level, formatted message); ``calls`` the same calls as made,
    (level, msg, args), for tests that look at the very objects logged. ``errored``
    is set at the first error.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.errored = Event()

    def _record(self, level: str, msg: str, *args: Any) -> None:
        self.calls.append((level, msg, args))
        self.records.append((level, msg % args))

    def debug(self, msg: str, *args: Any) -> None:
        self._record("debug", msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._record("info", msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._record("warning", msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._record("error", msg, *args)
        self.errored.set()

    def count(self, level: str, text: str) -> int:
        """How many records at ``level`` contain ``text``."""
        return sum(1 for lvl, msg in self.records if lvl == level and text in msg)

    def errors_with(self, obj: object) -> list[tuple[str, str, tuple[Any, ...]]]:
        """The error calls that were passed ``obj`` itself as an argument."""
        return [call for call in self.calls if call[0] == "error" and any(a is obj for a in call[2])]


class BrokenCollector:
    """A collector whose every method raises; ``metrics_calls`` counts the metrics() calls."""

    def __init__(self) -> None:
        self.metrics_calls = 0

    def record_arrival(self) -> None:
        raise RuntimeError("record_arrival is broken")

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        raise RuntimeError("record_completion is broken")

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        raise RuntimeError("record_failure is broken")

    def record_retry(self) -> None:
        raise RuntimeError("record_retry is broken")

    def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        raise RuntimeError("record_cancellation is broken")

    def metrics(self) -> tasker.TaskMetrics:
        self.metrics_calls += 1
        raise RuntimeError("metrics is broken")
