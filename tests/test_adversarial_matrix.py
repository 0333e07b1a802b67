"""The hostile-user matrix (issue #10): every place user code runs x every hostile act.

Each case builds a manager with work of every kind in flight — tasks queued, a task
running, a ``run_task`` call running, callbacks pending — plants one hostile act at one
user-code position, triggers that position, lets the work go, and shuts down. Then it
checks the promises:

- every submission answered exactly once (each reply ready; the collector heard one
  terminal record per arrival; each callback called once);
- every resource ``on_create`` made passed to ``on_destroy`` exactly once;
- no greenlet of the manager alive;
- everything returned within its bound (the case runs under a watchdog of
  ``stop`` timeout + ``kill_timeout`` + slack, on the real clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import gevent
import pytest
from conftest import manager_greenlets
from gevent.event import Event
from helpers import Gate, Resources, Unhealthy

import tasker
from tasker import TaskManager

Manager = TaskManager[int, Any]

KILL_TIMEOUT = 0.3  # seconds kill() waits for interrupted code before it gives up on it
STOP_TIMEOUT = 0.3  # the drain bound of the test's own stop(timeout)
BOUND = STOP_TIMEOUT + 2 * KILL_TIMEOUT + 2.0  # the whole case, slack included


class Custom(BaseException):
    """A BaseException that is neither Exception nor one of gevent's."""


POSITIONS = [
    "task",
    "run_task",
    "callback",
    "check_health",
    "retry_predicate",
    "worker_on_create",
    "worker_on_destroy",
    "temporary_on_create",
    "temporary_on_destroy",
    "logger",
    "collector_arrival",
    "collector_completion",
]

SHUTDOWNS = ["stop", "stop_timeout", "kill", "cancel_parent"]
RAISES = ["Exception", "Timeout", "GreenletExit", "Custom"]
OTHERS = ["block", "yield", "timer"]
ACTS = SHUTDOWNS + RAISES + OTHERS


@attrs.define
class Tally(tasker.Collector):
    """The default collector, also counting arrivals and terminal records."""

    arrivals: int = 0
    terminal: int = 0
    hook: Callable[[str], None] = lambda where: None

    def __attrs_post_init__(self) -> None:
        tasker.Collector.__init__(self)

    def record_arrival(self) -> None:
        self.arrivals += 1
        self.hook("collector_arrival")
        tasker.Collector.record_arrival(self)

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        tasker.Collector.record_completion(self, stamps)
        self.hook("collector_completion")

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        tasker.Collector.record_failure(self, stamps)

    def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.terminal += 1
        tasker.Collector.record_cancellation(self, stamps)


class Scene:
    """One manager, work of every kind in flight, and one hostile act planted at one position."""

    def __init__(self, position: str, act: str) -> None:
        self.position = position
        self.act = act
        self.armed = False  # the act fires once, at the position, after arm()
        self.fired = Event()
        self.unblock = Event()  # ends a "block" act, once the bound has been checked
        self.outcomes: list[str] = []  # what the act's own shutdown call did
        self.res = Resources()
        self.parent = tasker.Context()
        self.tally = Tally(hook=self.at)
        temporaries = position.startswith("temporary")

        def create() -> int:
            self.at("worker_on_create" if gevent.getcurrent() in self._workers() else "temporary_on_create")
            return self.res.create()

        def destroy(resource: int) -> None:
            self.res.destroy(resource)  # counted first: on_destroy was called
            self.at("worker_on_destroy" if gevent.getcurrent() in self._workers() else "temporary_on_destroy")

        def check(exc: BaseException) -> bool:
            self.at("check_health")
            return not isinstance(exc, Unhealthy)

        def retry_on(exc: BaseException) -> bool:  # asked only for healthy failures
            self.at("retry_predicate")
            return False

        config = tasker.Config(
            on_create=create,
            on_destroy=destroy,
            check_health=check,
            worker_count=2,
            max_worker_count=2,
            resource_pool_size=0 if temporaries else 1,
            logger=_Logger(self.at),
            collector=self.tally,
            ctx=self.parent,
            kill_timeout=KILL_TIMEOUT,
            retry=tasker.RetryPolicy(retry_on=retry_on),
        )
        self.manager: Manager = TaskManager(config)
        self.replies: list[tasker.TaskResult] = []
        self.callbacks: list[list[Any]] = []
        self.runs: list[gevent.Greenlet] = []
        self.gates: list[Gate] = []

    def _workers(self) -> Any:
        return self.manager._supervisor.workers if hasattr(self, "manager") else {}

    def at(self, position: str) -> None:
        """Called at every user-code position: the planted act fires at its own, once."""
        if position != self.position or not self.armed:
            return
        self.armed = False
        self.fired.set()
        act = self.act
        manager = self.manager
        if act in ("stop", "stop_timeout"):
            try:
                manager.stop(timeout=STOP_TIMEOUT if act == "stop_timeout" else None)
                self.outcomes.append("stopped")
            except (RuntimeError, tasker.ManagerStoppedError) as exc:  # inside the manager: refused
                self.outcomes.append(type(exc).__name__)
        elif act == "kill":
            manager.kill()
            self.outcomes.append("killed")
        elif act == "cancel_parent":
            self.parent.cancel()
        elif act == "Exception":
            raise Unhealthy("hostile")
        elif act == "Timeout":
            raise gevent.Timeout()
        elif act == "GreenletExit":
            raise gevent.GreenletExit()
        elif act == "Custom":
            raise Custom("hostile")
        elif act == "block":
            self.unblock.wait()
        elif act == "yield":
            gevent.sleep(0)
        elif act == "timer":
            gevent.Timeout.start_new(0.01)  # never cancelled: fires later, wherever this greenlet is

    def hostile_task(self, ctx: tasker.Context, resource: int) -> str:
        self.at("task")
        self.at("run_task")
        return "hostile"

    def fill(self) -> None:
        """Work of every kind in flight: two tasks running, some queued, a run_task, callbacks."""
        manager = self.manager
        for _ in range(2):
            gate = Gate()
            self.gates.append(gate)
            self.replies.append(manager.submit(gate))
        for i in range(3):
            self.replies.append(manager.submit(_returning(i)))
        for i in range(2):
            box: list[Any] = []
            self.callbacks.append(box)
            manager.queue_task_with_callback(_returning(i), _counting(box))
        gate = Gate()
        self.gates.append(gate)
        self.runs.append(gevent.spawn(manager.run_task, gate))
        gevent.idle()

    def trigger(self) -> None:
        """Make the planted position run."""
        manager = self.manager
        self.armed = True
        position = self.position
        try:
            if position == "task":
                self.replies.append(manager.submit(self.hostile_task, priority=True))
            elif position == "run_task":
                self.runs.append(gevent.spawn(manager.run_task, self.hostile_task))
            elif position == "callback":
                box: list[Any] = []
                self.callbacks.append(box)

                def callback(result: Any, error: BaseException | None) -> None:
                    box.append(1)
                    self.at("callback")

                manager.queue_task_with_priority_with_callback(lambda ctx, r: "cb", callback)
            elif position == "retry_predicate":  # a healthy failure asks the retry policy
                self.replies.append(manager.submit(_healthy_failure, priority=True))
            elif position in ("check_health", "worker_on_create", "worker_on_destroy", "logger"):
                # An unhealthy failure: check_health, then the retirement (logged, its
                # resource destroyed) and a replacement (its resource created).
                self.replies.append(manager.submit(_unhealthy, priority=True, once=True))
            elif position.startswith("temporary"):
                self.runs.append(gevent.spawn(manager.run_task, lambda ctx, r: "temporary"))
            elif position == "collector_arrival":  # in a submitter greenlet of its own
                self.runs.append(gevent.spawn(self._submit_one))
            elif position == "collector_completion":
                self.replies.append(manager.submit(lambda ctx, r: "completed", priority=True))
        finally:
            self.gates[0].release.set()  # one worker free: it takes the priority message

    def _submit_one(self) -> None:
        try:
            self.replies.append(self.manager.submit(lambda ctx, r: "arrived"))
        except tasker.ManagerStoppedError:
            self.outcomes.append("refused")  # the act stopped the manager first: nothing was accepted

    def release(self) -> None:
        for gate in self.gates:
            gate.release.set()

    def shut_down(self) -> None:
        manager = self.manager
        if not (manager._shutdown.stop_called or manager._shutdown.kill_called):
            manager.stop(timeout=STOP_TIMEOUT)
        if not manager._shutdown.finished.wait(BOUND):
            raise AssertionError("shutdown did not finish within its bound")

    def check(self) -> None:
        manager = self.manager
        for reply in self.replies:
            assert reply.ready(), f"a reply was never resolved ({self.position}, {self.act})"
        gevent.joinall(self.runs, timeout=BOUND)
        assert all(run.dead for run in self.runs), "a run_task caller still waits"
        for box in self.callbacks:
            assert box == [1], f"a callback was called {len(box)} times"
        assert not manager._shutdown.callback_greenlets
        assert self.tally.terminal == self.tally.arrivals, (self.tally.terminal, self.tally.arrivals)
        if self.act == "block" and self.position.endswith("on_destroy"):
            # kill_timeout let shutdown give up on it; once it returns it is counted again.
            self.unblock.set()
            gevent.idle()
        self.res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []
        assert manager._shutdown.destroyer is None or manager._shutdown.destroyer.dead


class _Logger:
    def __init__(self, at: Callable[[str], None]) -> None:
        self._at = at

    def _log(self, msg: str, *args: Any) -> None:
        self._at("logger")

    debug = info = warning = error = _log


def _returning(value: int) -> Callable[[tasker.Context, int], int]:
    return lambda ctx, resource: value


def _counting(box: list[Any]) -> Callable[[Any, BaseException | None], None]:
    return lambda result, error: box.append(1)


def _healthy_failure(ctx: tasker.Context, resource: int) -> None:
    raise KeyError("a healthy failure")


def _unhealthy(ctx: tasker.Context, resource: int) -> None:
    raise Unhealthy("bad resource")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("position", POSITIONS)
def test_hostile_act(position: str, act: str) -> None:
    """Whatever user code does at any position, every promise holds and shutdown is bounded."""
    if position == "collector_arrival" and act in ("block", "timer"):
        pytest.skip("the submitter's own greenlet: blocking it, or a timer in it, is the caller's own doing")
    with gevent.Timeout(BOUND + 3, AssertionError(f"{position} x {act}: not within its bound")):
        scene = Scene(position, act)
        scene.fill()
        scene.trigger()
        assert scene.fired.wait(BOUND), f"{position} was never reached"
        scene.release()
        scene.shut_down()
        scene.unblock.set()
        scene.check()
        if position == "collector_arrival" and act in RAISES:
            assert scene.outcomes == [], scene.outcomes  # the collector's own raise is logged: the submission stands


PARKED = ["worker", "supervisor", "scaler", "watcher", "submitter", "stop_drain", "stop_teardown", "kill_wait"]


@pytest.mark.parametrize("how", ["kill", "timeout"])
@pytest.mark.parametrize("place", PARKED)
def test_greenlet_interrupted_while_parked(place: str, how: str) -> None:
    """A greenlet of the manager, or one waiting on it, killed or timed out where it parks."""
    with gevent.Timeout(BOUND + 3, AssertionError(f"{place} x {how}: not within its bound")):
        res = Resources()
        parent = tasker.Context()
        closing = Event()
        slow_close = Event()

        def destroy(resource: int) -> None:
            res.destroy(resource)
            if closing.is_set() and not slow_close.is_set():
                slow_close.wait()  # the first pool resource closes slowly: teardown parks on it

        config = tasker.Config(
            on_create=res.create,
            on_destroy=destroy,
            worker_count=2,
            max_worker_count=4,
            max_queue_size=1,
            ctx=parent,
            kill_timeout=KILL_TIMEOUT,
        )
        manager: Manager = TaskManager(config)
        gate = Gate()
        held = manager.submit(gate)
        gevent.idle()

        def hit(greenlet: Any) -> None:
            if how == "kill":
                greenlet.kill(block=False)
            else:  # a Timeout some user code left behind: it fires from the hub
                gevent.get_hub().loop.run_callback(greenlet.throw, gevent.Timeout())

        replies: list[tasker.TaskResult] = []
        waiters: list[gevent.Greenlet] = []
        if place == "worker":
            (idle,) = manager._mailbox.idle
            hit(idle.greenlet)
        elif place == "supervisor":
            hit(manager._supervisor.greenlet)
        elif place == "scaler":
            assert manager._scaler is not None
            hit(manager._scaler.greenlet)
        elif place == "watcher":
            assert manager._shutdown.watcher is not None
            hit(manager._shutdown.watcher)
        elif place == "submitter":
            replies.append(manager.submit(gate))  # the free worker takes it: both busy now
            replies.append(manager.submit(lambda ctx, r: "queued"))  # fills the main lane
            waiter = gevent.spawn(manager.submit, lambda ctx, r: "waits for room")
            gevent.idle()
            assert manager.stats().blocked_submitters == 1
            hit(waiter)
            waiters.append(waiter)
        elif place in ("stop_drain", "stop_teardown"):
            if place == "stop_teardown":
                closing.set()
                gate.release.set()
            stopper = gevent.spawn(manager.stop)
            gevent.idle()
            assert not stopper.ready()  # parked: draining, or waiting for a slow on_destroy
            hit(stopper)
            waiters.append(stopper)
        elif place == "kill_wait":
            stuck = Event()

            def swallows(ctx: tasker.Context, r: int) -> None:
                while not stuck.is_set():
                    try:
                        stuck.wait()
                    except BaseException:  # a hostile task that ignores kill()
                        pass

            replies.append(manager.submit(swallows))
            gevent.idle()
            killer = gevent.spawn(manager.kill)
            gevent.idle()
            hit(killer)
            waiters.append(killer)
            stuck.set()
        gevent.idle()
        gevent.joinall(waiters)
        gate.release.set()
        slow_close.set()
        # The manager still works (unless its own stop() or kill() was the one hit)...
        if not (manager._shutdown.stop_called or manager._shutdown.kill_called):
            assert manager.queue_task(lambda ctx, r: "served") == "served"
            parent.cancel()  # ...and still stops when its parent is cancelled
        elif not manager._shutdown.kill_called:
            manager.kill()  # a stop() killed halfway: kill() finishes the shutdown
        if not manager._shutdown.finished.wait(BOUND):
            manager.kill()
        assert manager._shutdown.finished.is_set()
        assert held.ready() and all(r.ready() for r in replies)
        gevent.idle()
        res.assert_all_destroyed_once()
        assert manager_greenlets(manager) == []
