"""Keyed dispatch, rate limits and transient retries, through a real manager on virtual time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from helpers import Gate, Manager, Resources, Unhealthy

import tasker
from tasker import (
    CancelledError,
    KeyLimits,
    QueueFullError,
    RateLimit,
    RetriesExhaustedError,
    RetryPolicy,
    TaskKilledError,
    TaskResult,
)
from tasker.testing import FakeClock


class Busy(Exception):
    """A healthy, transient failure, as a scraper raises for a 503."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("503")
        if retry_after is not None:
            self.retry_after = retry_after


def manager_on(clock: FakeClock, resources: Resources, **kwargs: Any) -> Manager:
    kwargs.setdefault("max_worker_count", kwargs.get("worker_count", 2))
    kwargs.setdefault("resource_pool_size", 0)
    manager = Manager(resources.config(clock=clock, **kwargs))
    clock.advance(0)  # the workers start and park at time 0
    return manager


def run_until(clock: FakeClock, done: Callable[[], bool], step: float = 0.01, limit: int = 100_000) -> None:
    clock.advance(0)  # what can run now runs now
    for _ in range(limit):
        if done():
            return
        clock.advance(step)
    pytest.fail("never done")


def answered_once(replies: list[TaskResult]) -> Counter[TaskResult]:
    """Count every resolution of each reply from now on."""
    seen: Counter[TaskResult] = Counter()
    for reply in replies:
        reply.rawlink(lambda r: seen.update([r]))
    return seen


class InFlight:
    """Tasks that record, per key, how many run at this instant and the most ever seen."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.starts: list[tuple[float, str]] = []

    def task(self, key: str, seconds: float) -> Callable[[tasker.Context, int], str]:
        def run(ctx: tasker.Context, resource: int) -> str:
            self.now[key] += 1
            self.peak[key] = max(self.peak[key], self.now[key])
            self.starts.append((self.clock.now(), key))
            try:
                self.clock.sleep(seconds)
            finally:
                self.now[key] -= 1
            return key

        return run


class TestPerKeyConcurrency:
    """Never more than the key's limit in flight, at any instant; other keys go by."""

    def test_never_more_than_k_per_key(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        limits = {"big": KeyLimits(concurrency=3)}
        with manager_on(clock, resources, worker_count=8, key_concurrency=2, key_limits=limits) as m:
            replies = [
                m.submit(probe.task(key, 0.01 * (1 + i % 4)), key=key, priority=i % 5 == 0)
                for i in range(60)
                for key in ("a", "b", "big")
            ]
            peaks = []
            while not all(r.ready() for r in replies):
                stats = m.stats()
                peaks.append(dict(stats.key_in_flight))
                clock.advance(0.005)
            assert [r.get() for r in replies] == [k for _ in range(60) for k in ("a", "b", "big")]
        assert probe.peak == {"a": 2, "b": 2, "big": 3}
        assert max(p.get("a", 0) for p in peaks) == 2 and max(p.get("big", 0) for p in peaks) == 3
        resources.assert_all_destroyed_once()

    def test_a_redelivery_goes_before_the_later_messages_of_its_key(self) -> None:
        """Regression: the failed worker's key slot was freed before the redelivery, and a
        later message of the key took it: redelivered messages go first, keyed or not."""
        clock, resources = FakeClock(), Resources()
        order: list[str] = []

        def task(name: str) -> Callable[[tasker.Context, int], str]:
            def run(ctx: tasker.Context, resource: int) -> str:
                order.append(name)
                if order == ["A"]:
                    raise Unhealthy("the first run of A")
                return name

            return run

        with manager_on(clock, resources, worker_count=2, key_concurrency=1, max_retries=1) as m:
            replies = [m.submit(task(name), key="k") for name in "AB"]
            run_until(clock, lambda: all(r.ready() for r in replies))
            assert [r.get() for r in replies] == ["A", "B"]
        assert order == ["A", "A", "B"]

    def test_a_full_key_does_not_block_other_keys(self) -> None:
        """No head-of-line blocking: the messages behind a full key's are served."""
        clock, resources = FakeClock(), Resources()
        gate = Gate()
        with manager_on(clock, resources, worker_count=2, key_concurrency=1) as m:
            running = m.submit(gate, key="slow")
            gate.started.wait()
            waiting = [m.submit(gate, key="slow") for _ in range(3)]
            other = m.submit(lambda ctx, r: "fast", key="fast")
            unkeyed = m.submit(lambda ctx, r: "plain")
            assert other.get() == "fast" and unkeyed.get() == "plain"
            stats = m.stats()
            assert (stats.queued_tasks, stats.key_waiting_tasks, stats.key_in_flight) == (3, 3, (("slow", 1),))
            assert not any(r.ready() for r in waiting)
            gate.release.set()
            assert [r.get() for r in [running, *waiting]] == ["gate"] * 4

    def test_priority_is_strict_among_eligible_messages(self) -> None:
        clock, resources = FakeClock(), Resources()
        gate, order = Gate(), []

        def note(name: str) -> Callable[[tasker.Context, int], None]:
            return lambda ctx, r: order.append(name)

        with manager_on(clock, resources, worker_count=1, key_concurrency=1) as m:
            m.submit(gate, key="k")
            gate.started.wait()
            m.submit(note("k-priority"), key="k", priority=True)  # its key is full: not eligible
            m.submit(note("main"))
            m.submit(note("other-priority"), key="other", priority=True)
            gate.release.set()
        assert order == ["other-priority", "k-priority", "main"]

    def test_map_with_a_key_function(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        with manager_on(clock, resources, worker_count=6, key_concurrency=1) as m:
            results = m.imap_unordered(
                lambda ctx, r, item: probe.task(item[0], 0.01)(ctx, r), ["a1", "a2", "b1", "b2"], key=lambda s: s[0]
            )
            got: list[Any] = []
            runner = gevent.spawn(lambda: got.extend(results))
            run_until(clock, runner.ready)
        assert sorted(got) == ["a", "a", "b", "b"] and probe.peak == {"a": 1, "b": 1}

    def test_unhashable_key_is_refused(self) -> None:
        clock, resources = FakeClock(), Resources()
        with manager_on(clock, resources) as m, pytest.raises(TypeError, match="hashable"):
            m.submit(lambda ctx, r: 1, key=["a"])  # type: ignore[arg-type]


class TestRateLimits:
    """Dispatches follow the token buckets exactly, each wait ended by a timer."""

    def test_global_rate(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        with manager_on(clock, resources, worker_count=4, rate_limit=RateLimit(10.0, burst=2)) as m:
            replies = [m.submit(probe.task("-", 0.0)) for _ in range(12)]
            run_until(clock, lambda: all(r.ready() for r in replies))
        starts = [round(t, 6) for t, _ in probe.starts]
        assert starts == [0.0, 0.0] + [round(0.1 * i, 6) for i in range(1, 11)]

    def test_a_submission_does_not_overtake_the_messages_waiting_for_the_token(self) -> None:
        """Regression: a submission made once the next token was due, before its timer ran,
        went straight to the parked worker, ahead of the priority and main messages waiting."""
        clock, resources = FakeClock(), Resources()
        order: list[str] = []

        def note(name: str) -> Callable[[tasker.Context, int], None]:
            return lambda ctx, r: order.append(name)

        with manager_on(clock, resources, worker_count=1, rate_limit=RateLimit(10.0)) as m:

            def late() -> None:
                clock.sleep(0.1)  # wakes as the next token is due, before the token's own timer
                m.submit(note("main-late"))

            gevent.spawn(late)
            clock.advance(0)
            m.submit(note("first"))  # the one token
            clock.advance(0)
            m.submit(note("main-early"))
            m.submit(note("priority"), priority=True)
            run_until(clock, lambda: len(order) == 4)
        assert order == ["first", "priority", "main-early", "main-late"]

    def test_per_key_rate_with_a_global_rate_over_it(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        config = {"key_rate": RateLimit(1.0), "rate_limit": RateLimit(4.0), "worker_count": 4}
        with manager_on(clock, resources, **config) as m:
            replies = [m.submit(probe.task(k, 0.0), key=k) for _ in range(3) for k in "abcdef"]
            run_until(clock, lambda: all(r.ready() for r in replies))
        per_key: dict[str, list[float]] = {}
        for t, k in probe.starts:
            per_key.setdefault(k, []).append(t)
        for times in per_key.values():  # the documented bound, burst + 1 + rate * T starts in T s:
            assert all(times[i + 2] - times[i] >= 1.0 - 1e-9 for i in range(len(times) - 2))  # 3 need 1 s
            assert times[2] >= 2.0 - 1e-9  # and its third token came at 2 s at the earliest
        everything = sorted(t for t, _ in probe.starts)
        for i in range(len(everything) - 4):  # never 5 starts within a second globally
            assert everything[i + 4] - everything[i] >= 0.75 - 1e-9

    def test_long_run_rate_within_one_percent(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        with manager_on(clock, resources, worker_count=3, key_rate=RateLimit(50.0, burst=5)) as m:
            replies = [m.submit(probe.task("k", 0.001), key="k") for _ in range(1000)]
            run_until(clock, lambda: all(r.ready() for r in replies), step=0.5)
        times = [t for t, _ in probe.starts]
        measured = (len(times) - 5) / (times[-1] - times[0])
        assert abs(measured - 50.0) / 50.0 < 0.01


class TestTransientRetries:
    """Healthy failures retried later with backoff; Retry-After honoured; no worker held."""

    def flaky(self, fails: list[BaseException]) -> Callable[[tasker.Context, int], str]:
        def run(ctx: tasker.Context, resource: int) -> str:
            if fails:
                raise fails.pop(0)
            return "ok"

        return run

    def test_exponential_backoff_then_success(self) -> None:
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), base_delay=1.0, jitter=False)
        starts: list[float] = []
        fails: list[BaseException] = [Busy(), Busy()]

        def task(ctx: tasker.Context, resource: int) -> str:
            starts.append(clock.now())
            return self.flaky(fails)(ctx, resource)

        with manager_on(clock, resources, worker_count=1, retry=policy) as m:
            reply = m.submit(task)
            run_until(clock, reply.ready)
            assert reply.get() == "ok" and (reply.attempts, reply.retries) == (3, 2)
            metrics = m.metrics()
        assert starts == [0.0, 1.0, 3.0]
        assert (metrics.total_transient_retries, metrics.total_tasks_retried) == (2, 0)

    def test_a_retry_counts_on_its_own_message_not_on_the_shared_defaults(self) -> None:
        """The first retry of a default submission gives it an ``Extra`` of its own: the
        spec tuple that every default submission shares is left as it was."""
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), base_delay=1.0, jitter=False)
        with manager_on(clock, resources, worker_count=1, retry=policy) as m:
            shared = m._spec  # private: the defaults' spec
            retried = m.submit(self.flaky([Busy()]))
            run_until(clock, retried.ready)
            assert retried.get() == "ok" and retried.retries == 1
            assert retried._spec is not shared and m._spec is shared and shared[4] is None
            plain = m.submit(lambda ctx, r: "plain")
            assert plain._spec is shared
            run_until(clock, plain.ready)
            assert (plain.get(), plain.retries, plain.attempts) == ("plain", 0, 1)

    def test_retry_after_is_honoured_and_the_worker_is_free_meanwhile(self) -> None:
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), base_delay=100.0)
        with manager_on(clock, resources, worker_count=1, retry=policy) as m:
            reply = m.submit(self.flaky([Busy(retry_after=5.0)]))
            clock.advance(0)
            assert m.stats().delayed_tasks == 1 and not reply.ready()
            assert m.submit(lambda ctx, r: "meanwhile").get() == "meanwhile"  # the one worker is free
            clock.advance(4.99)
            assert not reply.ready()
            clock.advance(0.01)
            assert reply.get() == "ok" and m.stats().delayed_tasks == 0

    def test_exhausted(self) -> None:
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), attempts=2, base_delay=0.1, random=lambda: 0.5)
        last = Busy()
        with manager_on(clock, resources, retry=policy) as m:
            reply = m.submit(self.flaky([Busy(), Busy(), last, Busy()]))
            run_until(clock, reply.ready)
        error = reply.exception
        assert isinstance(error, RetriesExhaustedError) and error.attempts == 3 and error.__cause__ is last

    def test_not_retried(self) -> None:
        """Other errors, at-most-once messages, attempts=0 and long hints go straight back."""
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), max_retry_after=10.0)
        with manager_on(clock, resources, retry=policy) as m:
            other = ValueError("no")
            once, off, long_hint = Busy(), Busy(), Busy(retry_after=11.0)
            replies = [
                m.submit(self.flaky([other])),
                m.submit(self.flaky([once]), once=True),
                m.submit(self.flaky([off]), retry=RetryPolicy(retry_on=(Busy,), attempts=0)),
                m.submit(self.flaky([long_hint])),
            ]
            gevent.wait(replies)
            assert [r.exception for r in replies] == [other, once, off, long_hint]
            assert m.metrics().total_transient_retries == 0

    def test_per_submission_policy_and_unhealthy_redeliveries_counted_apart(self) -> None:
        clock, resources = FakeClock(), Resources()
        policy = RetryPolicy(retry_on=(Busy,), base_delay=0.5, jitter=False)
        with manager_on(clock, resources, max_retries=1) as m:
            reply = m.submit(self.flaky([Unhealthy(), Busy(), Unhealthy(), Busy()]), retry=policy)
            run_until(clock, reply.ready)
            metrics = m.metrics()
        # Unhealthy, redelivered; Busy, retried; Unhealthy again: max_retries=1 is spent.
        assert isinstance(reply.exception, RetriesExhaustedError) and isinstance(reply.exception.cause, Unhealthy)
        assert (metrics.total_tasks_retried, metrics.total_transient_retries) == (1, 1)


class TestWaitingMessagesAreQueuedMessages:
    """Delayed and key-blocked messages are cancelled, killed, drained and counted like queued ones."""

    def delayed(self, m: Manager, clock: FakeClock, delay: float = 5.0) -> TaskResult:
        def task(ctx: tasker.Context, resource: int) -> str:
            if reply.retries == 0:
                raise Busy(retry_after=delay)
            return "late"

        reply = m.submit(task, retry=RetryPolicy(retry_on=(Busy,)))
        clock.advance(0)
        assert m.stats().delayed_tasks == 1
        return reply

    def test_cancel_a_delayed_message_answers_once(self) -> None:
        clock, resources = FakeClock(), Resources()
        with manager_on(clock, resources) as m:
            reply = self.delayed(m, clock)
            seen = answered_once([reply])
            assert reply.cancel()
            assert not reply.cancel()
            clock.advance(10.0)
            assert isinstance(reply.exception, CancelledError) and m.stats().delayed_tasks == 0
        assert seen[reply] == 1

    def test_kill_answers_delayed_and_key_blocked_messages_once(self) -> None:
        clock, resources = FakeClock(), Resources()
        gate = Gate()
        m = manager_on(clock, resources, key_concurrency=1)
        delayed = self.delayed(m, clock)
        running = m.submit(gate, key="k")
        gate.started.wait()
        blocked = m.submit(gate, key="k")
        seen = answered_once([delayed, running, blocked])
        m.kill()
        clock.advance(10.0)
        for reply in (delayed, running, blocked):
            assert isinstance(reply.exception, TaskKilledError)
            assert seen[reply] == 1
        resources.assert_all_destroyed_once()

    @pytest.mark.parametrize(
        ("delay", "drained"),
        [
            pytest.param(3.0, True, id="runs_it_after_its_delay"),
            pytest.param(30.0, False, id="kills_it_at_the_timeout"),
        ],
    )
    def test_stop_with_a_timeout_and_a_delayed_message(self, delay: float, drained: bool) -> None:
        """stop(10 s) waits out a 3 s retry delay and runs the message; a 30 s one is killed at 10 s."""
        clock, resources = FakeClock(), Resources()
        m = manager_on(clock, resources)
        reply = self.delayed(m, clock, delay=delay)
        stopper = gevent.spawn(m.stop, 10.0)
        run_until(clock, stopper.ready)
        assert stopper.value is drained
        if drained:
            assert reply.get() == "late" and clock.now() >= delay
        else:
            assert isinstance(reply.exception, TaskKilledError) and clock.now() < delay
        resources.assert_all_destroyed_once()

    @pytest.mark.parametrize("workers", [1, 3])
    def test_every_parked_worker_exits_once_the_last_delayed_message_is_handed_out(self, workers: int) -> None:
        """Closing, parked workers wait for delayed messages; the last hand-out lets them go."""
        clock, resources = FakeClock(), Resources()
        m = manager_on(clock, resources, worker_count=workers)
        reply = self.delayed(m, clock, delay=3.0)
        stopper = gevent.spawn(m.stop)
        clock.advance(2.0)
        assert len(m._supervisor.workers) == workers and not stopper.ready()  # parked, not gone
        clock.advance(1.0)
        stopper.join()
        assert stopper.value is True and reply.get() == "late"
        resources.assert_all_destroyed_once()

    def test_stop_drains_key_blocked_messages(self) -> None:
        clock, resources = FakeClock(), Resources()
        probe = InFlight(clock)
        m = manager_on(clock, resources, worker_count=4, key_concurrency=1)
        replies = [m.submit(probe.task("k", 1.0), key="k") for _ in range(5)]
        stopper = gevent.spawn(m.stop)
        run_until(clock, stopper.ready)
        assert stopper.value is True and [r.get() for r in replies] == ["k"] * 5 and probe.peak["k"] == 1

    def test_max_queue_size_counts_delayed_messages(self) -> None:
        clock, resources = FakeClock(), Resources()
        with manager_on(clock, resources, max_queue_size=1) as m:
            reply = self.delayed(m, clock)
            with pytest.raises(QueueFullError):
                m.submit(lambda ctx, r: 1, block=False)
            assert reply.cancel()
            assert m.submit(lambda ctx, r: 1, block=False).get() == 1

    def test_a_submitter_waiting_for_room_gets_it_when_the_delayed_message_runs(self) -> None:
        """Regression: the delayed message went straight to a parked worker, its room went
        to nobody, and the submitter waiting for it waited forever."""
        clock, resources = FakeClock(), Resources()
        with manager_on(clock, resources, worker_count=1, max_queue_size=1) as m:
            reply = self.delayed(m, clock, delay=1.0)
            waiter = gevent.spawn(m.submit, lambda ctx, r: "room")
            clock.advance(0)
            assert m.stats().blocked_submitters == 1
            clock.advance(1.0)
            assert reply.get() == "late"
            assert waiter.get().get() == "room"


class TestConfig:
    """The new Config fields refuse bad values at construction."""

    @pytest.mark.parametrize(
        ("field", "value", "error"),
        [
            ("key_concurrency", 0, ValueError),
            ("key_concurrency", 1.5, TypeError),
            ("key_rate", 10.0, TypeError),
            ("rate_limit", {"rate": 1}, TypeError),
            ("key_limits", [("a", KeyLimits())], TypeError),
            ("key_limits", {"a": 3}, TypeError),
            ("retry", (Busy,), TypeError),
        ],
    )
    def test_bad_values(self, field: str, value: object, error: type[Exception]) -> None:
        with pytest.raises(error, match=field):
            tasker.Config(on_create=lambda: 0, worker_count=1, **{field: value})  # type: ignore[arg-type]

    def test_a_bad_retry_at_submit(self) -> None:
        clock, resources = FakeClock(), Resources()
        with manager_on(clock, resources) as m, pytest.raises(TypeError, match="RetryPolicy"):
            m.submit(lambda ctx, r: 1, retry=3)  # type: ignore[arg-type]
