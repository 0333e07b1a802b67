"""Reliability under random schedules: a hypothesis state machine drives a real TaskManager.

Each example builds a fresh manager on a FakeClock and runs a random interleaving of
submissions of every variant (tasks that return, raise healthy or unhealthy errors,
yield, block on a gate or wait for their context), run_task calls, gate releases,
cancels, clock advances, injected faults (on_create, on_destroy, logger, collector,
callbacks), parent-context cancel, stop(), kill() and kill during stop.

The "keyed" family adds keyed submissions under per-key concurrency limits, per-key and
global rate limits, and transient failures retried by a RetryPolicy after a backoff
(some with a ``retry_after`` hint), with a bounded queue or not.

After every step: no reply was resolved twice, every resolved reply is an outcome the
task and the schedule allow, and stats(), the collector and the live resources agree
with what the tasks did. At the end: every reply was resolved exactly once (callbacks
called once), every resource was passed to on_destroy exactly once and no manager
greenlet is alive.

CI runs a few hundred examples split over several test items (each under the 20 s
watchdog of conftest); ``pytest -m deep`` runs many more.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import manager_greenlets
from gevent.event import Event
from helpers import Healthy, Unhealthy, check_health
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import tasker
from tasker import (
    CancelledError,
    ManagerStoppedError,
    QueueFullError,
    ResourceCreationError,
    RetriesExhaustedError,
    TaskKilledError,
    TaskManager,
    TaskResult,
    TaskTimeoutError,
)
from tasker._supervisor import BACKOFF_CAP
from tasker.testing import FakeClock

# -- what the machine observes -------------------------------------------------------


class Ledger:
    """Every TaskResult made during a test, how often it was resolved and how often its links fired."""

    def __init__(self) -> None:
        self.msgs: list[TaskResult] = []
        self.sets: dict[TaskResult, int] = {}
        self.notified: dict[TaskResult, int] = {}
        self.tasks: dict[TaskResult, Any] = {}  # each answered message's task, as it was answered

    def reset(self) -> None:
        self.msgs = []
        self.sets = {}
        self.notified = {}
        self.tasks = {}

    def on_notify(self, reply: TaskResult) -> None:
        self.notified[reply] = self.notified.get(reply, 0) + 1


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    """Count, per TaskResult, the calls of set()/set_exception() and the link notifications."""
    book = Ledger()
    original_init = TaskResult.__init__
    original_set = TaskResult.set
    original_set_exception = TaskResult.set_exception

    def recording_init(self: TaskResult, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        book.msgs.append(self)
        book.sets[self] = 0
        self.rawlink(book.on_notify)

    def counting_set(self: TaskResult, *args: Any) -> None:
        book.sets[self] = book.sets.get(self, 0) + 1
        book.tasks.setdefault(self, self._fn)  # an answered message lets go of its task
        original_set(self, *args)

    def counting_set_exception(self: TaskResult, *args: Any) -> None:
        book.sets[self] = book.sets.get(self, 0) + 1
        book.tasks.setdefault(self, self._fn)
        original_set_exception(self, *args)

    monkeypatch.setattr(TaskResult, "__init__", recording_init)
    monkeypatch.setattr(TaskResult, "set", counting_set)
    monkeypatch.setattr(TaskResult, "set_exception", counting_set_exception)
    yield book


class Factory:
    """on_create/on_destroy with switchable faults; records every resource."""

    def __init__(self, fail_calls: frozenset[int] = frozenset()) -> None:
        self._ids = itertools.count(1)
        self.calls = 0
        self.fail_calls = fail_calls  # 1-based calls that raise (start-up failures)
        self.failing = False  # while True every on_create raises
        self.slow = False  # while True on_create yields to the hub first (a connect)
        self.raising_destroy = False  # while True on_destroy raises (after recording)
        self.created: list[int] = []
        self.destroyed: list[int] = []
        self.create_failures = 0
        self.destroy_failures = 0

    def create(self) -> int:
        self.calls += 1
        if self.slow:
            gevent.sleep(0)
        if self.failing or self.calls in self.fail_calls:
            self.create_failures += 1
            raise ConnectionError(f"injected on_create failure (call {self.calls})")
        rid = next(self._ids)
        self.created.append(rid)
        return rid

    def destroy(self, rid: int) -> None:
        self.destroyed.append(rid)
        if self.raising_destroy:
            self.destroy_failures += 1
            raise OSError(f"injected on_destroy failure ({rid})")

    @property
    def live(self) -> set[int]:
        return set(self.created) - set(self.destroyed)


class Transient(Exception):
    """A healthy failure the keyed family's RetryPolicy retries (a 503)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("transient")
        if retry_after is not None:
            self.retry_after = retry_after


class Custom(BaseException):
    """A BaseException that is neither Exception nor one of gevent's."""


HOOK_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, gevent.Timeout, gevent.GreenletExit, Custom)


class Hostile:
    """What a logger or collector does on its next call: raise any kind, or shut the manager down."""

    def __init__(self) -> None:
        self.raising = False
        self.error_kind: type[BaseException] = RuntimeError  # not "error": a Logger has error()
        self.raised = 0
        self.shutdown: Callable[[], None] | None = None  # armed: called once, from inside the hook

    def _maybe_raise(self) -> None:
        shutdown, self.shutdown = self.shutdown, None
        if shutdown is not None:
            shutdown()
        if self.raising:
            self.raised += 1
            kind = self.error_kind
            raise kind() if kind is gevent.Timeout else kind("injected hook failure")


class FlakyCollector(Hostile):
    """A MetricsCollector that counts every record (then forwards it) and may raise after counting."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.inner = tasker.Collector(clock=clock)
        self.arrivals = self.completed = self.failed = self.retried = self.cancelled = 0

    def record_arrival(self) -> None:
        self.arrivals += 1
        self.inner.record_arrival()
        self._maybe_raise()

    def record_completion(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.completed += 1
        self.inner.record_completion(stamps)
        self._maybe_raise()

    def record_failure(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.failed += 1
        self.inner.record_failure(stamps)
        self._maybe_raise()

    def record_retry(self) -> None:
        self.retried += 1
        self.inner.record_retry()
        self._maybe_raise()

    def record_cancellation(self, stamps: tasker.TaskLifecycleTimestamps) -> None:
        self.cancelled += 1
        self.inner.record_cancellation(stamps)
        self._maybe_raise()

    def metrics(self) -> tasker.TaskMetrics:
        return self.inner.metrics()


class FlakyLogger(Hostile):
    """A Logger that formats every record and may raise."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def _log(self, msg: str, *args: Any) -> None:
        self.records += 1
        msg % args
        self._maybe_raise()

    debug = info = warning = error = _log


KINDS = ("value", "healthy", "unhealthy", "flaky", "yield", "gate", "cooperative")
RUN_TASK_KINDS = ("value", "healthy", "unhealthy", "yield", "gate")
KEYED_KINDS = ("value", "healthy", "flaky", "yield", "gate", "transient", "transient-always")
KEYS = ("a", "b", "c")


class Probe:
    """A task that does what its kind says and records every run.

    value: returns; healthy: raises Healthy; unhealthy: raises Unhealthy every time;
    flaky: Unhealthy on its first run, then returns; yield: gevent.sleep(0) then
    returns; gate: blocks until released; cooperative: waits for its context to be
    cancelled, then raises CancelledError from ctx.check(); transient: Transient (a
    healthy error the retry policy retries; with a retry_after hint for odd values) on
    its first run, then returns; transient-always: Transient on every run.
    """

    def __init__(self, kind: str, value: int, priority: bool = False, once: bool = False) -> None:
        self.kind = kind
        self.value = value
        self.priority = priority
        self.once = once
        self.timeout: float | None = None
        self.key: str | None = None
        self.gate = Event()
        self.entries = 0
        self.running = 0
        self.unhealthy = 0
        self.raised: list[BaseException] = []
        self.resources: list[Any] = []

    def _raise(self, exc: Exception) -> None:
        self.raised.append(exc)
        raise exc

    def __call__(self, ctx: tasker.Context, resource: Any) -> int:
        self.entries += 1
        self.running += 1
        self.resources.append(resource)
        try:
            kind = self.kind
            if kind == "healthy":
                self._raise(Healthy(self.value))
            if kind == "unhealthy" or (kind == "flaky" and self.entries == 1):
                self.unhealthy += 1
                self._raise(Unhealthy(self.value))
            if kind == "transient-always" or (kind == "transient" and self.entries == 1):
                self._raise(Transient(0.3 if self.value % 2 else None))
            if kind == "yield":
                gevent.sleep(0)
            elif kind == "gate":
                self.gate.wait()
            elif kind == "cooperative":
                ctx.wait()
                try:
                    ctx.check()
                except CancelledError as exc:
                    self._raise(exc)
            return self.value
        finally:
            self.running -= 1


def probe_of(ledger: Ledger, msg: TaskResult) -> Probe:
    """The Probe a message carries (every submission of the machine is one), or carried
    when it was answered."""
    task = ledger.tasks.get(msg, msg._fn)
    assert isinstance(task, Probe), task
    return task


class CallbackRecord:
    """The calls a callback received."""

    def __init__(self, probe: Probe, raising: bool) -> None:
        self.probe = probe
        self.raising = raising
        self.calls: list[tuple[Any, BaseException | None]] = []

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.calls.append((result, error))
        if self.raising:
            raise RuntimeError("injected callback failure")


# name -> (priority, once, style)
VARIANTS: dict[str, tuple[bool, bool, str]] = {"submit": (False, False, "async")}
for _prio, _once in itertools.product((False, True), repeat=2):
    _stem = "queue_task" + ("_with_priority" if _prio else "") + ("_once" if _once else "")
    VARIANTS[_stem] = (_prio, _once, "blocking")
    VARIANTS[_stem + "_async"] = (_prio, _once, "async")
    VARIANTS[_stem + "_with_callback"] = (_prio, _once, "callback")
assert len(VARIANTS) == 13

FAULTS = ("create", "slow create", "destroy", "logger", "collector")
LIFECYCLE_AFTER = 10  # steps before stop/kill/parent cancel may happen: work piles up first
FAMILIES = ("plain", "bounded", "parent", "faults", "keyed")


class Tally:
    """Figures over every example of a test, for the README."""

    def __init__(self) -> None:
        self.examples = 0
        self.steps = 0
        self.replies = 0
        self.callbacks = 0
        self.run_tasks = 0
        self.faults: dict[str, int] = dict.fromkeys(
            ("on_create", "on_destroy", "logger", "collector", "callback", "start-up", "unhealthy", "healthy"), 0
        )
        self.faults.update(dict.fromkeys(("parked worker kill", "parked worker timeout"), 0))
        self.endings: dict[str, int] = {}
        self.lost = 0
        self.leaked = 0

    def dump(self, name: str) -> None:
        path = os.environ.get("TASKER_RELIABILITY_TALLY")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps({"test": name, **vars(self)}) + "\n")


# -- the machine -----------------------------------------------------------------------


class ManagerMachine(RuleBasedStateMachine):
    """Random schedules against one TaskManager per example."""

    def __init__(self, family: str, ledger: Ledger, tally: Tally) -> None:
        super().__init__()
        self.family = family
        self.ledger = ledger
        self.tally = tally
        self.manager: TaskManager[int, int] | None = None
        self.probes: list[Probe] = []
        self.run_probes: list[Probe] = []
        self.async_replies: list[TaskResult] = []
        self.cancelled: set[TaskResult] = set()
        self.callbacks: list[CallbackRecord] = []
        self.submitters: list[tuple[Probe, gevent.Greenlet]] = []  # blocking or room-waiting
        self.runners: list[tuple[Probe, gevent.Greenlet]] = []  # run_task callers
        self.stopper: gevent.Greenlet | None = None
        self.kill_called = False
        self.parent: tasker.Context | None = None
        self.parent_cancelled = False
        self.checked: set[TaskResult] = set()
        self._values = itertools.count(1)
        self.steps_taken = 0  # lifecycle rules (stop, kill, parent cancel) wait for LIFECYCLE_AFTER steps

    # -- set-up --------------------------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self.ledger.reset()
        self.tally.examples += 1
        family = self.family
        wc = data.draw(st.integers(1, 3), label="worker_count")
        self.max_workers = data.draw(st.integers(wc, max(wc, 4)), label="max_worker_count")
        self.max_retries = data.draw(st.integers(0, 2), label="max_retries")
        self.pool_size = data.draw(st.integers(0, 2), label="resource_pool_size")
        queue: int | None = None
        if family == "bounded":
            queue = data.draw(st.integers(1, 3), label="max_queue_size")
        elif family == "faults":
            queue = data.draw(st.none() | st.integers(1, 3), label="max_queue_size")
        if family == "parent" or (family == "faults" and data.draw(st.booleans(), label="parent ctx")):
            self.parent = tasker.Context()
        self.end_with_kill = data.draw(st.booleans(), label="end with kill")
        self.key_limit: int | None = None
        self.retry_attempts = 0
        keyed: dict[str, Any] = {}
        if family == "keyed":
            queue = data.draw(st.none() | st.integers(1, 3), label="max_queue_size")
            self.key_limit = data.draw(st.integers(1, 2), label="key_concurrency")
            self.retry_attempts = data.draw(st.integers(1, 2), label="retry attempts")
            keyed = {
                "key_concurrency": self.key_limit,
                "key_rate": data.draw(
                    st.none() | st.builds(tasker.RateLimit, st.sampled_from([2.0, 5.0]), st.integers(1, 2)),
                    label="key_rate",
                ),
                "rate_limit": data.draw(st.none() | st.just(tasker.RateLimit(10.0, 2)), label="rate_limit"),
                "key_limits": data.draw(
                    st.sampled_from([{}, {"c": tasker.KeyLimits(concurrency=3)}]), label="key_limits"
                ),
                "retry": tasker.RetryPolicy(
                    retry_on=(Transient,), attempts=self.retry_attempts, base_delay=0.1, max_delay=1.0,
                    random=lambda: 0.5,
                ),
            }
        self.clock = FakeClock()
        self.logger = FlakyLogger()
        self.collector = FlakyCollector(self.clock)
        self.worker_count = wc
        self.queue = queue

        def config(factory: Factory) -> tasker.Config[int]:
            return tasker.Config(
                on_create=factory.create,
                on_destroy=factory.destroy,
                worker_count=wc,
                max_worker_count=self.max_workers,
                max_retries=self.max_retries,
                resource_pool_size=self.pool_size,
                max_queue_size=queue,
                check_health=check_health,
                ctx=self.parent,
                logger=self.logger,
                collector=self.collector,
                clock=self.clock,
                **keyed,
            )

        if family == "faults":
            bad_call = data.draw(st.none() | st.integers(1, self.pool_size + wc), label="failing start-up call")
            if bad_call is not None:
                broken = Factory(frozenset({bad_call}))
                with pytest.raises(ResourceCreationError) as info:
                    TaskManager(config(broken))
                assert isinstance(info.value.__cause__, ConnectionError)
                assert sorted(broken.destroyed) == broken.created, "start-up failure leaked resources"
                self.tally.faults["start-up"] += 1
                self.tally.leaked += len(broken.live)
        self.factory = Factory()
        self.manager = TaskManager(config(self.factory))
        self.pool_ids = set(range(1, self.pool_size + 1))
        if family == "faults":  # start with on_create broken (replacements, bursts, run_task temporaries)
            self.factory.failing = data.draw(st.booleans(), label="on_create failing from the start")
            self.factory.slow = data.draw(st.booleans(), label="on_create yields")

    # -- helpers -------------------------------------------------------------------------

    @property
    def m(self) -> TaskManager[int, int]:
        assert self.manager is not None
        return self.manager

    @property
    def closing(self) -> bool:
        return self.stopper is not None or self.kill_called or self.parent_cancelled

    def _probe(self, kind: str, priority: bool = False, once: bool = False) -> Probe:
        return Probe(kind, next(self._values), priority, once)

    def _lane_full(self, priority: bool) -> bool:
        if self.queue is None:
            return False
        mailbox = self.m._mailbox
        return (mailbox.priority if priority else mailbox.main).size() >= self.queue  # delayed ones count

    @staticmethod
    def _call(fn: Callable[[], Any]) -> tuple[str, Any]:
        try:
            return ("value", fn())
        except Exception as exc:
            return ("error", exc)

    def _settle(self) -> None:
        for _ in range(3):
            gevent.idle()

    # -- rules: submissions ------------------------------------------------------------

    @rule(
        variant=st.sampled_from(sorted(VARIANTS)),
        kind=st.sampled_from(KINDS),
        timeout=st.sampled_from([None, None, 0.05, 0.3]),
        callback_raises=st.booleans(),
    )
    def submit(self, variant: str, kind: str, timeout: float | None, callback_raises: bool) -> None:
        self._submit(variant, kind, timeout, callback_raises)

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from(sorted(VARIANTS)), st.sampled_from(KINDS), st.booleans()), min_size=2, max_size=6
        )
    )
    def submit_burst(self, batch: list[tuple[str, str, bool]]) -> None:
        for variant, kind, callback_raises in batch:
            self._submit(variant, kind, None, callback_raises)

    def _submit(self, variant: str, kind: str, timeout: float | None, callback_raises: bool) -> None:
        priority, once, style = VARIANTS[variant]
        probe = self._probe(kind, priority, once)
        if variant == "submit":
            probe.timeout = timeout
        method = getattr(self.m, variant)
        if style == "callback":
            record = CallbackRecord(probe, callback_raises)

            def call() -> Any:
                return method(probe, record)
        elif variant == "submit":

            def call() -> Any:
                return method(probe, timeout=timeout)
        else:

            def call() -> Any:
                return method(probe)

        if self.closing:
            # Every variant raises at once, none hangs, nothing is queued.
            with pytest.raises(ManagerStoppedError):
                call()
            assert probe.entries == 0
            return
        self.probes.append(probe)
        if style == "callback":
            self.callbacks.append(record)
            self.tally.callbacks += 1
            self.tally.faults["callback"] += callback_raises
        if style == "blocking" or self._lane_full(priority):
            self.submitters.append((probe, gevent.spawn(self._call, call)))
            return
        out = call()
        if style == "callback":
            assert out is None
        else:
            assert isinstance(out, TaskResult)
            assert probe_of(self.ledger, out) is probe
            self.async_replies.append(out)

    @precondition(lambda self: self.family == "keyed")
    @rule(
        kind=st.sampled_from(KEYED_KINDS),
        key=st.sampled_from(KEYS),
        priority=st.booleans(),
        once=st.booleans(),
        count=st.integers(1, 4),
    )
    def submit_keyed(self, kind: str, key: str, priority: bool, once: bool, count: int) -> None:
        """Several messages of one key: the ones over its limit wait in place."""
        for _ in range(count):
            probe = self._probe(kind, priority, once)
            probe.key = key

            def call(probe: Probe = probe) -> Any:
                return self.m.submit(probe, key=probe.key, priority=probe.priority, once=probe.once)

            if self.closing:
                with pytest.raises(ManagerStoppedError):
                    call()
                continue
            self.probes.append(probe)
            if self._lane_full(priority):
                self.submitters.append((probe, gevent.spawn(self._call, call)))
            else:
                self.async_replies.append(call())

    @rule(kind=st.sampled_from(RUN_TASK_KINDS))
    def run_task(self, kind: str) -> None:
        probe = self._probe(kind)
        if self.closing:
            with pytest.raises(ManagerStoppedError):
                self.m.run_task(probe)
            assert probe.entries == 0
            return
        self.tally.run_tasks += 1
        self.run_probes.append(probe)
        self.runners.append((probe, gevent.spawn(self._call, lambda: self.m.run_task(probe))))

    # -- rules: the world ----------------------------------------------------------------

    @rule(i=st.integers(0, 1000))
    def release_gate(self, i: int) -> None:
        gates = [p for p in self.probes + self.run_probes if p.kind == "gate" and not p.gate.is_set()]
        if gates:
            gates[i % len(gates)].gate.set()

    @rule()
    def release_all_gates(self) -> None:
        for probe in self.probes + self.run_probes:
            probe.gate.set()

    @rule(dt=st.sampled_from([0.01, 0.05, 0.1, 0.25, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(fault=st.sampled_from(FAULTS), on=st.booleans(), error=st.sampled_from(HOOK_ERRORS))
    def toggle_fault(self, fault: str, on: bool, error: type[BaseException]) -> None:
        self.logger.error_kind = self.collector.error_kind = error  # what the logger/collector raise: any kind
        if fault == "create":
            self.factory.failing = on
        elif fault == "slow create":
            self.factory.slow = on
        elif fault == "destroy":
            self.factory.raising_destroy = on
        elif fault == "logger":
            self.logger.raising = on
        else:
            self.collector.raising = on

    @rule()
    def heal(self) -> None:
        """on_create works again: within the backoff cap every base worker is back."""
        self.factory.failing = False
        self.clock.advance(BACKOFF_CAP + 1.0)
        self._settle()
        if not self.closing and not self.m._core.killing:
            assert self.m.stats().base_workers == self.worker_count, self.m.stats()

    @precondition(lambda self: self.async_replies)
    @rule(i=st.integers(0, 1000))
    def cancel(self, i: int) -> None:
        reply = self.async_replies[i % len(self.async_replies)]
        probe = probe_of(self.ledger, reply)
        was_ready = reply.ready()
        queued = not was_ready and probe.running == 0
        self.cancelled.add(reply)
        assert reply.cancel() is (not was_ready)
        if queued:  # at rest a pending message that is not running is in a lane
            assert reply.ready(), "cancel() of a queued message did not resolve it at once"
            assert isinstance(reply.exception, CancelledError)

    @precondition(
        lambda self: self.parent is not None and not self.parent_cancelled and self.steps_taken >= LIFECYCLE_AFTER
    )
    @rule()
    def cancel_parent(self) -> None:
        assert self.parent is not None
        self.parent_cancelled = True
        self.parent.cancel()

    # -- rules: lifecycle ------------------------------------------------------------------

    @precondition(lambda self: self.stopper is None and not self.kill_called and self.steps_taken >= LIFECYCLE_AFTER)
    @rule(timeout=st.sampled_from([None, None, 0.1, 2.0]))
    def stop(self, timeout: float | None) -> None:
        self.stopper = gevent.spawn(self.m.stop, timeout)

    @precondition(
        lambda self: not self.kill_called
        and not self.m._shutdown.finished.is_set()
        and self.steps_taken >= LIFECYCLE_AFTER
    )
    @rule()
    def kill(self) -> None:
        self.kill_called = True
        self.m.kill()
        # When kill() returns every submission has its reply, every callback has run,
        # every resource is destroyed and no manager greenlet is alive.
        for msg in self.ledger.msgs:
            assert msg.ready(), f"kill() returned with an unresolved reply {msg!r}"
        for record in self.callbacks:
            if record.probe in self._accepted_probes():
                assert len(record.calls) == 1, "kill() returned before a callback ran"
        assert self.factory.live == set(), f"kill() returned with live resources {self.factory.live}"
        assert manager_greenlets(self.m) == []

    @precondition(
        lambda self: not self.kill_called
        and not self.m._shutdown.finished.is_set()
        and self.steps_taken >= LIFECYCLE_AFTER
    )
    @rule(hook=st.sampled_from(["logger", "collector"]))
    def shut_down_from_a_hook(self, hook: str) -> None:
        """The next logger/collector call tries stop() (refused inside an actor) and then kill()."""

        def shutdown() -> None:
            me = gevent.getcurrent()
            if me in self.m._supervisor.workers or me is self.m._supervisor.greenlet:
                with pytest.raises(RuntimeError):
                    self.m.stop()
            self.kill_called = True
            self.tally.endings["kill from a hook"] = self.tally.endings.get("kill from a hook", 0) + 1
            self.m.kill()

        (self.logger if hook == "logger" else self.collector).shutdown = shutdown

    @precondition(lambda self: self.m._mailbox.idle or self.m._mailbox.idle_burst)
    @rule(how=st.sampled_from(["kill", "timeout"]), i=st.integers(0, 100))
    def hit_a_parked_worker(self, how: str, i: int) -> None:
        """A timer some task left behind kills or times out a worker while it is parked."""
        mailbox = self.m._mailbox
        parked = mailbox.idle + mailbox.idle_burst
        worker = parked[i % len(parked)]
        exc: BaseException = gevent.GreenletExit() if how == "kill" else gevent.Timeout()

        def fire() -> None:  # from the hub, as a timer would; only while it is still parked
            if worker in mailbox.idle or worker in mailbox.idle_burst:
                worker.greenlet.throw(exc)

        gevent.get_hub().loop.run_callback(fire)
        self.tally.faults[f"parked worker {how}"] += 1
        self._settle()

    @precondition(lambda self: self.stopper is not None or self.kill_called)
    @rule()
    def stop_again(self) -> None:
        with pytest.raises(ManagerStoppedError):
            self.m.stop()

    # -- invariants ----------------------------------------------------------------------

    def _accepted_probes(self) -> set[Probe]:
        return {probe_of(self.ledger, msg) for msg in self.ledger.msgs}

    def _check_outcome(self, msg: TaskResult) -> None:
        """A resolved reply is one the task and the schedule allow."""
        probe = probe_of(self.ledger, msg)
        assert msg.attempts == probe.entries, (msg.attempts, probe.entries)
        assert msg.attempts <= (1 if probe.once else self.max_retries + 1 + msg.retries)
        assert msg.retries <= (0 if probe.once else self.retry_attempts)
        if msg.successful():
            assert msg.value == probe.value and probe.entries >= 1, (msg.value, probe.kind)
            assert probe.kind not in ("healthy", "unhealthy", "cooperative", "transient-always"), probe.kind
            assert probe.kind not in ("flaky", "transient") or probe.entries >= 2
            return
        exc = msg.exception
        if isinstance(exc, (Healthy, CancelledError)) and any(exc is e for e in probe.raised):
            assert probe.kind in ("healthy", "cooperative")
        elif isinstance(exc, Transient):
            assert any(exc is e for e in probe.raised)
            # Not retried: at most once, cancelled while it ran, or it failed while kill() ran.
            assert probe.once or msg in self.cancelled or self.m._core.killing, (msg.retries, probe.kind)
        elif isinstance(exc, RetriesExhaustedError) and isinstance(exc.cause, Transient):
            assert probe.kind == "transient-always" and not probe.once
            assert msg.retries == self.retry_attempts and exc.attempts == msg.attempts
            assert exc.__cause__ is probe.raised[-1]
        elif isinstance(exc, Unhealthy):
            assert any(exc is e for e in probe.raised)
            # Never redelivered: at most once, no retries, or it failed while kill() ran.
            assert self.m._core.killing or (msg.attempts == 1 and (probe.once or self.max_retries == 0)), (
                msg.attempts,
                probe.once,
            )
        elif isinstance(exc, RetriesExhaustedError):
            assert not probe.once and self.max_retries >= 1
            assert exc.attempts == msg.attempts == self.max_retries + 1
            assert exc.__cause__ is probe.raised[-1] and exc.cause is exc.__cause__
        elif isinstance(exc, TaskKilledError):
            assert self.m._core.killing, f"TaskKilledError without kill(): {exc!r}"
        elif isinstance(exc, CancelledError):
            assert msg in self.cancelled, f"CancelledError for a reply nobody cancelled: {exc!r}"
        elif isinstance(exc, TaskTimeoutError):
            assert probe.timeout is not None
        elif isinstance(exc, ResourceCreationError):
            assert self.factory.create_failures, "ResourceCreationError with no on_create failure"
            assert isinstance(exc.__cause__, ConnectionError)
        else:
            raise AssertionError(f"unexpected outcome {exc!r} for a {probe.kind} task")

    @invariant()
    def consistent(self) -> None:
        if self.manager is None:
            return
        self._settle()
        self.tally.steps += 1
        self.steps_taken += 1
        m = self.m
        book = self.ledger
        msgs = book.msgs
        # Resolved at most once; links fire once, when resolved.
        for msg in msgs:
            assert book.sets.get(msg, 0) <= 1, f"reply resolved {book.sets[msg]} times"
            assert book.notified.get(msg, 0) == (1 if msg.ready() else 0)
            if msg.ready() and msg not in self.checked:
                self._check_outcome(msg)
                self.checked.add(msg)
        for record in self.callbacks:
            assert len(record.calls) <= 1, "callback called twice"
        # The collector saw what the replies say.
        c = self.collector
        ready = [msg for msg in msgs if msg.ready()]
        ok = sum(1 for msg in ready if msg.successful())
        withdrawn = sum(1 for msg in ready if isinstance(msg.exception, (CancelledError, TaskKilledError)))
        # run_task calls are recorded too (seed: TotalTasksCompleted counts every success);
        # a call still in flight may or may not have been recorded yet.
        runs = [g.value for _, g in self.runners if g.dead]
        in_flight = len(self.runners) - len(runs)
        run_ok = sum(1 for how, _ in runs if how == "value")
        run_withdrawn = sum(1 for how, out in runs if isinstance(out, TaskKilledError))
        assert c.arrivals == len(msgs) + len(self.runners)
        extra = (
            c.completed - ok - run_ok,
            c.failed - (len(ready) - ok - withdrawn) - (len(runs) - run_ok - run_withdrawn),
            c.cancelled - withdrawn - run_withdrawn,
        )
        assert min(extra) >= 0 and sum(extra) <= in_flight, (extra, in_flight)
        low = sum(msg.attempts - 1 - msg.retries for msg in msgs)
        probes = [probe_of(self.ledger, msg) for msg in msgs]
        high = sum(min(p.unhealthy, self.max_retries) for p in probes if not p.once)
        assert low <= c.retried <= high, (low, c.retried, high)
        # stats() never negative and matches what the probes see.
        stats = m.stats()
        fields = (
            stats.base_workers,
            stats.active_workers,
            stats.burst_workers,
            stats.queued_tasks,
            stats.priority_tasks,
            stats.available_resources,
            stats.blocked_submitters,
            stats.busy_workers,
        )
        assert min(fields) >= 0, stats
        assert stats.active_workers == stats.base_workers + stats.burst_workers
        assert stats.base_workers <= self.worker_count
        assert stats.base_workers + stats.burst_workers <= self.max_workers
        delayed = m._mailbox.delayed
        assert stats.delayed_tasks == len(delayed) and all(not msg.ready() for msg in delayed)
        unanswered = [msg for msg in msgs if not msg.ready()]
        pending = [msg for msg in unanswered if not probe_of(self.ledger, msg).running and msg not in delayed]
        pending_priority = sum(1 for msg in pending if msg._priority)
        if m._core.killing:
            # A kill() still under way (called from inside a collector call, say) may have
            # taken queued messages out of the lanes without answering them yet: neither
            # queued nor answered here. The teardown checks that each gets its reply.
            assert stats.priority_tasks <= pending_priority, (stats, pending)
            assert stats.queued_tasks <= len(pending) - pending_priority, (stats, pending)
        else:
            assert stats.priority_tasks == pending_priority, (stats, pending)
            assert stats.queued_tasks == len(pending) - pending_priority, (stats, pending)
        for lane in (m._mailbox.main, m._mailbox.priority):
            assert not any(msg.ready() for msg in lane), "a resolved message is still queued"
        accepted = self._accepted_probes()
        waiting_for_room = sum(1 for p, g in self.submitters if not g.dead and p not in accepted)
        assert stats.blocked_submitters == waiting_for_room, (stats, waiting_for_room)
        running_in_workers = sum(p.running for p in self.probes)
        assert stats.busy_workers == running_in_workers
        # Never more than a key's limit in flight, at any instant.
        for key in KEYS:
            limit = 3 if key == "c" and m._config.key_limits else self.key_limit
            running = sum(p.running for p in self.probes if p.key == key)
            assert limit is None or running <= limit, (key, running, limit)
            assert running <= dict(stats.key_in_flight).get(key, 0)
        pooled_in_use = sum(1 for p in self.run_probes if p.running and p.resources[-1] in self.pool_ids)
        if m._shutdown.finished.is_set():
            assert stats == tasker.TaskStats(0, 0, 0, 0, 0, 0, 0, 0), stats
            assert len(m._mailbox.keys) == 0, "a key record outlived the manager"
        else:
            assert stats.available_resources == self.pool_size - pooled_in_use
        # Every live resource is held by a worker, the pool or a running run_task.
        f = self.factory
        assert len(f.destroyed) == len(set(f.destroyed)), "a resource was destroyed twice"
        assert set(f.destroyed) <= set(f.created)
        held = {w.resource for w in m._supervisor.workers.values() if w.started}
        held |= set(m._pool._free)
        held |= {p.resources[-1] for p in self.run_probes if p.running}
        assert f.live <= held, f"leaked resources {f.live - held}"

    # -- teardown --------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.manager is None:
            return
        m = self.m
        try:
            self._shut_down()
            self._final_checks()
        finally:
            for probe in self.probes + self.run_probes:
                probe.gate.set()
            if not m._shutdown.finished.is_set():
                self.tally.leaked += 1
                if not m._shutdown.kill_called:
                    with gevent.Timeout(5, False):
                        m.kill()
            gevent.killall([g for _, g in self.submitters + self.runners])
            if self.stopper is not None:
                self.stopper.kill()

    def _shut_down(self) -> None:
        m = self.m
        for probe in self.probes + self.run_probes:
            probe.gate.set()
        for msg in self.ledger.msgs:  # cooperative tasks end when their reply is cancelled
            if not msg.ready() and probe_of(self.ledger, msg).kind == "cooperative":
                self.cancelled.add(msg)
                msg.cancel()
        if self.kill_called:
            ending = "kill"
        elif self.stopper is not None:
            ending = "stop, then kill" if m._core.killing else "stop"
        elif self.parent_cancelled:
            ending = "parent cancel"
        elif self.end_with_kill:
            ending = "kill at the end"
            self.kill()
        else:
            ending = "stop at the end"
            self.stopper = gevent.spawn(m.stop)
        self.tally.endings[ending] = self.tally.endings.get(ending, 0) + 1
        # Backoff restarts and stop(timeout) run on the fake clock: move it until done.
        waiting = [g for _, g in self.submitters + self.runners]
        if self.stopper is not None:
            waiting.append(self.stopper)
        for _ in range(400):
            self._settle()
            if m._shutdown.finished.is_set() and all(g.dead for g in waiting):
                break
            for msg in self.ledger.msgs:  # a cooperative task submitted by a late submitter
                probe = probe_of(self.ledger, msg)
                if not msg.ready() and probe.kind == "cooperative" and probe.running:
                    self.cancelled.add(msg)
                    msg.cancel()
            self.clock.advance(0.5)
        else:
            raise AssertionError(f"shutdown did not finish ({ending}): {m.stats()}, {waiting}")

    def _final_checks(self) -> None:
        m = self.m
        book = self.ledger
        self.consistent()
        self.tally.replies += len(book.msgs)
        # Every reply resolved exactly once and every link fired once.
        lost = [msg for msg in book.msgs if not msg.ready() or book.sets.get(msg) != 1]
        self.tally.lost += len(lost)
        assert not lost, f"replies not resolved exactly once: {lost}"
        assert all(book.notified.get(msg) == 1 for msg in book.msgs)
        by_probe = {probe_of(self.ledger, msg): msg for msg in book.msgs}
        # Callbacks: exactly once, with what the reply says.
        for record in self.callbacks:
            msg = by_probe.get(record.probe)
            if msg is None:  # rejected at the door (stopped while waiting for room)
                assert record.calls == []
                continue
            assert len(record.calls) == 1, f"callback called {len(record.calls)} times"
            result, error = record.calls[0]
            if msg.successful():
                assert (result, error) == (msg.value, None)
            else:
                assert result is None and error is msg.exception
        # Blocking callers and room-waiting submitters got the reply, or a door error.
        for probe, greenlet in self.submitters:
            how, out = greenlet.value
            msg = by_probe.get(probe)
            if msg is None:
                assert how == "error" and isinstance(out, (ManagerStoppedError, QueueFullError)), out
                assert probe.entries == 0
            elif how == "value" and isinstance(out, TaskResult):
                assert out is msg
            elif how == "value" and out is None:
                pass  # a callback variant: its callback is checked above
            elif how == "value":
                assert msg.successful() and out == msg.value
            else:
                assert out is msg.exception, (out, msg.exception)
        # run_task callers: the task's own outcome, or what kill/stop/on_create allow.
        for probe, greenlet in self.runners:
            how, out = greenlet.value
            assert probe.entries <= 1
            if how == "value":
                assert out == probe.value and probe.kind not in ("healthy", "unhealthy")
            elif any(out is e for e in probe.raised):
                pass
            elif isinstance(out, TaskKilledError):
                assert m._core.killing
            elif isinstance(out, ResourceCreationError):
                assert self.factory.create_failures and isinstance(out.__cause__, ConnectionError)
            elif isinstance(out, ManagerStoppedError):
                assert self.closing and probe.entries == 0
            else:
                raise AssertionError(f"unexpected run_task outcome {out!r}")
        # Resources, greenlets, counts.
        f = self.factory
        self.tally.leaked += len(f.live)
        assert sorted(f.destroyed) == sorted(f.created), (f.created, f.destroyed)
        assert manager_greenlets(m) == []
        c = self.collector
        assert c.arrivals == c.completed + c.failed + c.cancelled == len(book.msgs) + len(self.runners)
        metrics = m.metrics()
        assert (
            metrics.total_tasks_completed,
            metrics.total_tasks_failed,
            metrics.total_tasks_retried,
            metrics.total_tasks_cancelled,
        ) == (c.completed, c.failed, c.retried, c.cancelled)
        # The door stays shut.
        with pytest.raises(ManagerStoppedError):
            m.submit(Probe("value", 0))
        with pytest.raises(ManagerStoppedError):
            m.run_task(Probe("value", 0))
        with pytest.raises(ManagerStoppedError):
            m.kill()
        self.tally.faults["on_create"] += f.create_failures
        self.tally.faults["on_destroy"] += f.destroy_failures
        self.tally.faults["logger"] += self.logger.raised
        self.tally.faults["collector"] += c.raised
        probes = self.probes + self.run_probes
        self.tally.faults["unhealthy"] += sum(p.unhealthy for p in probes)
        self.tally.faults["healthy"] += sum(1 for p in probes for e in p.raised if isinstance(e, Healthy))


# -- the tests -------------------------------------------------------------------------

CI = settings(
    max_examples=75,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
DEEP = settings(CI, max_examples=150, stateful_step_count=60)  # ~7 s per item: under the 20 s watchdog


def run_machine(family: str, ledger: Ledger, profile: settings, name: str) -> None:
    tally = Tally()

    def machine() -> ManagerMachine:
        return ManagerMachine(family, ledger, tally)

    try:
        # Hypothesis takes "a class or a function" that returns a machine (its docstring
        # says so) but annotates the parameter as a class only.
        run_state_machine_as_test(machine, settings=profile)  # type: ignore[arg-type]
    finally:
        tally.dump(name)


class TestRandomSchedules:
    """Random interleavings of every operation keep every reply, resource and count consistent."""

    @pytest.mark.parametrize("family", FAMILIES)
    def test_schedules(self, family: str, ledger: Ledger) -> None:
        run_machine(family, ledger, CI, f"ci-{family}")

    @pytest.mark.deep
    @pytest.mark.parametrize("round_", range(8))
    @pytest.mark.parametrize("family", FAMILIES)
    def test_schedules_deep(self, family: str, round_: int, ledger: Ledger) -> None:
        run_machine(family, ledger, DEEP, f"deep-{family}-{round_}")


class TestCreationFailureWhileAnotherWorkerConnects:
    """Queued callers fail with ResourceCreationError only when no worker is left to serve them."""

    def test_queue_waits_for_a_replacement_still_connecting(self) -> None:
        calls = 0
        connected = Event()
        made: list[int] = []
        destroyed: list[int] = []

        def create() -> int:
            nonlocal calls
            calls += 1
            if calls == 3:  # the first replacement: a transient failure
                gevent.sleep(0)
                raise ConnectionError("transient")
            if calls == 4:  # the second replacement: a slow but good connect
                connected.wait()
            made.append(calls)
            return calls

        config = tasker.Config(
            on_create=create,
            on_destroy=destroyed.append,
            worker_count=2,
            max_worker_count=2,
            resource_pool_size=0,
            check_health=check_health,
            clock=FakeClock(),
        )
        manager: TaskManager[int, Any] = TaskManager(config)
        try:
            bad = [manager.submit(Probe("unhealthy", i, once=True), once=True) for i in range(2)]  # both workers go
            queued = manager.submit(Probe("value", 7))
            for _ in range(5):
                gevent.idle()
            assert all(isinstance(r.exception, Unhealthy) for r in bad)
            assert not queued.ready(), f"failed while a worker was connecting: {queued.exception!r}"
            connected.set()
            assert queued.get() == 7
        finally:
            connected.set()
            manager.stop()
        assert sorted(destroyed) == sorted(made)


class TestKillWhileAStopFromACallbackWaits:
    """kill() from anywhere ends a stop() that is waiting inside a callback."""

    def test_kill_from_main(self) -> None:
        factory = Factory()
        config = tasker.Config(on_create=factory.create, on_destroy=factory.destroy, worker_count=2)
        manager: TaskManager[int, Any] = TaskManager(config)
        held = Probe("gate", 1)
        held_reply = manager.submit(held)
        stopped: list[bool] = []
        manager.queue_task_with_callback(Probe("value", 2), lambda result, error: stopped.append(manager.stop()))
        for _ in range(3):
            gevent.idle()
        assert manager._shutdown.stop_called and held.running  # stop() waits, inside the callback, for the gate
        killer = gevent.spawn(manager.kill)
        try:
            with gevent.Timeout(2, AssertionError("kill() deadlocked")):
                killer.get()
            assert isinstance(held_reply.exception, TaskKilledError)
            for _ in range(3):
                gevent.idle()
            assert stopped == [False]
            assert sorted(factory.destroyed) == sorted(factory.created)
        finally:
            held.gate.set()
            if not manager._shutdown.finished.is_set():  # private: unblock the deadlock so the test ends cleanly
                manager._shutdown.excused_callbacks = 1
                manager._shutdown.check_quiet()
                killer.join()
