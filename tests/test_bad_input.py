"""Bad input at the door: the call that received it raises a clear error naming what was wrong,
and nothing is lost — no message queued, no arrival counted, no callback owed, the manager
still serves and stops cleanly.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from conftest import manager_greenlets
from helpers import Manager, Resources

import tasker
from tasker import Config, ManagerStoppedError, TaskManager


class NotCallableExecute:
    """Has an ``execute`` attribute, but it is not callable."""

    execute = 5

    def __repr__(self) -> str:
        return "<NotCallableExecute>"


class FetchTask:
    """A task class: its instances are tasks, the class itself is not."""

    def execute(self, ctx: tasker.Context, resource: int) -> str:
        return "fetched"


async def coroutine_function(*args: Any) -> None:
    """An ``async def``: tasker calls what it is given and would never await this."""


BAD_TASKS = [
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param("task", id="str"),
    pytest.param(NotCallableExecute(), id="execute-not-callable"),
    pytest.param(FetchTask, id="a-task-class"),
]
BAD_FNS = BAD_TASKS[:-1]  # a class may well be callable as fn(ctx, resource, item)
BAD_CALLBACKS = [
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param("cb", id="str"),
    pytest.param(coroutine_function, id="async-def"),
]

BLOCKING = ["queue_task", "queue_task_with_priority", "queue_task_once", "queue_task_with_priority_once"]
ASYNC = [name + "_async" for name in BLOCKING]
CALLBACK = [name + "_with_callback" for name in BLOCKING]


class CountingCollector(tasker.Collector):
    """The default collector, counting arrivals too."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals = 0

    def record_arrival(self) -> None:
        self.arrivals += 1
        super().record_arrival()


class Door:
    """A manager plus what it takes to prove nothing got past the door."""

    def __init__(self) -> None:
        self.resources = Resources()
        self.collector = CountingCollector()
        self.manager: Manager = TaskManager(self.resources.config(worker_count=2, collector=self.collector))
        self.ran: list[Any] = []

    def task(self, ctx: tasker.Context, resource: int) -> str:
        self.ran.append(resource)
        return "ran"

    def assert_nothing_got_in(self) -> None:
        for _ in range(3):
            gevent.idle()
        stats = self.manager.stats()
        assert (stats.queued_tasks, stats.priority_tasks, stats.busy_workers) == (0, 0, 0)
        assert self.collector.arrivals == 0
        assert self.ran == []
        assert self.manager._shutdown.callbacks == 0  # private: no callback is owed, stop() will not wait for one

    def assert_still_serves_and_stops(self) -> None:
        assert self.manager.queue_task(self.task) == "ran"
        assert self.manager.run_task(self.task) == "ran"
        assert self.manager.stop() is True
        self.resources.assert_all_destroyed_once()
        assert manager_greenlets(self.manager) == []


@pytest.fixture
def door() -> Iterator[Door]:
    d = Door()
    yield d
    if not d.manager._shutdown.finished.is_set():  # the test failed early
        d.manager.kill()


def names(excinfo: pytest.ExceptionInfo[BaseException], *words: str) -> None:
    message = str(excinfo.value)
    for word in words:
        assert word in message, (word, message)


class TestBadTasks:
    """A non-callable task is refused by every variant, naming the task."""

    @pytest.mark.parametrize("variant", ["submit", *BLOCKING, *ASYNC, "run_task"])
    @pytest.mark.parametrize("bad", BAD_TASKS)
    def test_refused(self, door: Door, variant: str, bad: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, variant)(bad)
        names(excinfo, "task", repr(bad))
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("variant", CALLBACK)
    @pytest.mark.parametrize("bad", BAD_TASKS)
    def test_refused_with_a_good_callback(self, door: Door, variant: str, bad: Any) -> None:
        called: list[Any] = []
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, variant)(bad, lambda result, error: called.append(error))
        names(excinfo, "task", repr(bad))
        door.assert_nothing_got_in()
        assert called == []
        door.assert_still_serves_and_stops()


class TestAsyncTasks:
    """``run_task`` refuses an ``async def`` (it would return an un-awaited coroutine).
    ``submit`` does not look: checking every task costs its hot path (choices.md)."""

    def test_run_task(self, door: Door) -> None:
        with pytest.raises(TypeError) as excinfo:
            door.manager.run_task(coroutine_function)
        names(excinfo, "task", "coroutine function")
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    def test_an_instance_of_a_task_class_is_a_task(self, door: Door) -> None:
        assert door.manager.submit(FetchTask()).get() == "fetched"
        assert door.manager.run_task(FetchTask()) == "fetched"
        door.assert_still_serves_and_stops()


class TestPositionalOptions:
    """submit's options are keyword-only (checked by submit itself, not by ``*``: see its docstring)."""

    @pytest.mark.parametrize("extra", [(True,), (False,), (True, True), (None, False, 1.0)])
    def test_refused(self, door: Door, extra: tuple[Any, ...]) -> None:
        with pytest.raises(TypeError) as excinfo:
            door.manager.submit(door.task, *extra)
        names(excinfo, "positional", "keyword", repr(extra[0]))
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    def test_the_signature_callers_see(self, door: Door) -> None:
        params = inspect.signature(door.manager.submit).parameters
        assert list(params) == ["task", "priority", "once", "timeout", "block", "key", "retry"]
        assert params["task"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert {p.kind for name, p in params.items() if name != "task"} == {inspect.Parameter.KEYWORD_ONLY}
        assert door.manager.submit(task=door.task, priority=True).get() == "ran"  # the task by keyword too
        door.assert_still_serves_and_stops()


class TestBadCallbacks:
    """A non-callable callback is refused before the task is queued, naming the callback."""

    @pytest.mark.parametrize("variant", CALLBACK)
    @pytest.mark.parametrize("bad", BAD_CALLBACKS)
    def test_refused(self, door: Door, variant: str, bad: Any) -> None:
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, variant)(door.task, bad)
        names(excinfo, "callback", repr(bad))
        door.assert_nothing_got_in()  # the task did not run and will not
        door.assert_still_serves_and_stops()


BAD_TIMEOUTS = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(math.nan, id="nan"),
    pytest.param("x", id="str"),
    pytest.param(True, id="bool"),
    pytest.param([1], id="list"),
]


class TestBadTimeouts:
    """submit(timeout=...) and stop(timeout=...) refuse anything but a positive number of seconds."""

    @pytest.mark.parametrize("bad", BAD_TIMEOUTS)
    @pytest.mark.parametrize("block", [True, False])
    def test_submit(self, door: Door, bad: Any, block: bool) -> None:
        with pytest.raises(ValueError) as excinfo:
            door.manager.submit(door.task, timeout=bad, block=block)
        names(excinfo, "timeout", repr(bad))
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    def test_submit_huge_int(self, door: Door) -> None:
        bad = 10**400
        try:
            with pytest.raises(ValueError) as excinfo:
                door.manager.submit(door.task, timeout=bad)
            names(excinfo, "timeout")
            door.assert_nothing_got_in()
        finally:
            door.manager.kill()

    @pytest.mark.parametrize("bad", BAD_TIMEOUTS)
    def test_stop(self, door: Door, bad: Any) -> None:
        with pytest.raises(ValueError) as excinfo:
            door.manager.stop(timeout=bad)
        names(excinfo, "timeout", repr(bad))
        # The refused stop() did not count: the manager still accepts and can be stopped.
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("bad", BAD_TIMEOUTS)
    def test_kill_still_allowed_after_a_refused_stop(self, door: Door, bad: Any) -> None:
        with pytest.raises(ValueError):
            door.manager.stop(timeout=bad)
        door.manager.kill()
        with pytest.raises(ManagerStoppedError):
            door.manager.stop()
        door.resources.assert_all_destroyed_once()


BAD_IN_FLIGHT = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param("2", id="str"),
    pytest.param(True, id="bool"),
]


class TestBadBatches:
    """map/imap_unordered check their arguments when called, before reading any item."""

    @staticmethod
    def items(read: list[int]) -> Iterator[int]:
        for i in range(5):
            read.append(i)
            yield i

    @pytest.mark.parametrize("method", ["map", "imap_unordered"])
    @pytest.mark.parametrize("bad", BAD_IN_FLIGHT)
    def test_max_in_flight(self, door: Door, method: str, bad: Any) -> None:
        read: list[int] = []
        with pytest.raises(ValueError) as excinfo:
            getattr(door.manager, method)(lambda ctx, r, item: item, self.items(read), max_in_flight=bad)
        names(excinfo, "max_in_flight", repr(bad))
        assert read == []
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("method", ["map", "imap_unordered"])
    @pytest.mark.parametrize("bad", BAD_FNS)
    def test_fn(self, door: Door, method: str, bad: Any) -> None:
        read: list[int] = []
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, method)(bad, self.items(read))
        names(excinfo, "fn", repr(bad))
        assert read == []
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("method", ["map", "imap_unordered"])
    def test_async_fn(self, door: Door, method: str) -> None:
        read: list[int] = []
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, method)(coroutine_function, self.items(read))
        names(excinfo, "fn", "coroutine function")
        assert read == []
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("method", ["map", "imap_unordered"])
    @pytest.mark.parametrize("flag", ["priority", "return_exceptions"])
    @pytest.mark.parametrize("items", [[], [1]], ids=["no-items", "one-item"])
    def test_flags(self, door: Door, method: str, flag: str, items: list[int]) -> None:
        with pytest.raises(TypeError) as excinfo:
            getattr(door.manager, method)(lambda ctx, r, item: item, items, **{flag: "yes"})
        names(excinfo, flag, "'yes'")
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()

    @pytest.mark.parametrize("method", ["map", "imap_unordered"])
    def test_items_not_iterable(self, door: Door, method: str) -> None:
        with pytest.raises(TypeError):
            getattr(door.manager, method)(lambda ctx, r, item: item, 5)
        door.assert_nothing_got_in()
        door.assert_still_serves_and_stops()


def good(**kwargs: Any) -> dict[str, Any]:
    return {"on_create": lambda: 1, "worker_count": 2, **kwargs}


BAD_CONFIGS = [
    pytest.param(good(worker_count=0), ValueError, "worker_count", id="worker_count=0"),
    pytest.param(good(worker_count="2"), TypeError, "worker_count", id="worker_count=str"),
    pytest.param(good(on_create=None), TypeError, "on_create", id="on_create=None"),
    pytest.param(good(on_destroy=3), TypeError, "on_destroy", id="on_destroy=int"),
    pytest.param(good(max_worker_count=1), ValueError, "max_worker_count", id="max_worker_count<worker_count"),
    pytest.param(good(burst_interval=0), ValueError, "burst_interval", id="burst_interval=0"),
    pytest.param(good(max_retries=-1), ValueError, "max_retries", id="max_retries=-1"),
    pytest.param(good(max_queue_size=0), ValueError, "max_queue_size", id="max_queue_size=0"),
    pytest.param(good(task_timeout=-1.0), ValueError, "task_timeout", id="task_timeout<0"),
    pytest.param(good(logger=object()), TypeError, "logger", id="logger=object"),
    pytest.param(good(on_create=coroutine_function), TypeError, "on_create", id="on_create=async-def"),
    pytest.param(good(on_destroy=coroutine_function), TypeError, "on_destroy", id="on_destroy=async-def"),
    pytest.param(good(check_health=coroutine_function), TypeError, "check_health", id="check_health=async-def"),
]


class TestBadConfig:
    """Config refuses bad values at construction, naming the field (Config in depth: test_config.py)."""

    @pytest.mark.parametrize(("kwargs", "error", "field"), BAD_CONFIGS)
    def test_refused(self, kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
        with pytest.raises(error) as excinfo:
            Config(**kwargs)
        names(excinfo, f"Config.{field}")

    @pytest.mark.parametrize(
        "bad",
        [None, {"on_create": int, "worker_count": 1}, Config, "config", Resources()],
        ids=["None", "dict", "the-class", "str", "Resources"],
    )
    def test_manager_needs_a_config(self, bad: Any, no_leftover_managers: list[Manager]) -> None:
        res = Resources()
        with pytest.raises(TypeError) as excinfo:
            TaskManager(bad)
        names(excinfo, "Config")
        assert res.calls == 0
        assert no_leftover_managers == []  # nothing was started


class TestBadContextAndCollector:
    """The other public constructors with a duration refuse bad ones the same way."""

    def test_context_child_negative(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            tasker.Context().child(timeout=-1)
        names(excinfo, "timeout")

    @pytest.mark.parametrize("bad", [pytest.param("x", id="str"), pytest.param(math.nan, id="nan")])
    def test_context_child_bad_type_or_nan(self, bad: Any) -> None:
        with pytest.raises((TypeError, ValueError)) as excinfo:
            tasker.Context().child(timeout=bad)
        names(excinfo, "timeout")

    @pytest.mark.parametrize(
        ("kwargs", "field"), [({"window": 0}, "window"), ({"relative_error": 0.5}, "relative_error")]
    )
    def test_collector_out_of_range(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            tasker.Collector(**kwargs)
        names(excinfo, field)

    @pytest.mark.parametrize("field", ["window", "relative_error"])
    def test_collector_wrong_type(self, field: str) -> None:
        with pytest.raises((TypeError, ValueError)) as excinfo:
            kwargs: dict[str, Any] = {field: "x"}
            tasker.Collector(**kwargs)
        names(excinfo, field)
