"""``tasker.Collector``: counts, exact means and extremes, sketched percentiles, windowed rates."""

from __future__ import annotations

import math
import random
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import gevent
import pytest
from gevent.event import Event
from helpers import hold_the_worker, raising
from hypothesis import given, settings
from hypothesis import strategies as st

import tasker
from tasker import TaskLifecycleTimestamps as Stamps
from tasker.testing import FakeClock

RELATIVE_ERROR = 0.01
EPS = 1e-12  # float slack on top of the stated relative error


def true_percentile(values: list[float], q: float) -> float:
    """The sample at nearest rank ``ceil(q * n)``: the value a p-quantile sketch approximates."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def collector_with(durations: list[float], relative_error: float = RELATIVE_ERROR) -> tasker.Collector:
    collector = tasker.Collector(clock=FakeClock(), relative_error=relative_error)
    for took in durations:
        collector.record_completion(Stamps(-1.0, 0.0, took))  # execution time exactly ``took``
    return collector


def timing(metrics: tasker.TaskMetrics) -> dict[str, float]:
    """The timing fields of ``metrics`` by name, so that a failed comparison names the field."""
    return {
        "min": metrics.min_execution_time,
        "max": metrics.max_execution_time,
        "average": metrics.average_execution_time,
        "p95": metrics.p95_execution_time,
        "p99": metrics.p99_execution_time,
        "wait": metrics.average_wait_time,
    }


def timed(execution: float, wait: float) -> dict[str, float]:
    """What ``timing`` reads when every timed task ran ``execution`` s after waiting ``wait`` s."""
    return {**dict.fromkeys(["min", "max", "average", "p95", "p99"], execution), "wait": wait}


def complete(collector: tasker.Collector, clock: FakeClock, count: int, every: float) -> None:
    """Record ``count`` instant completions, the clock moved ``every`` seconds before each."""
    for _ in range(count):
        clock.advance(every)
        now = clock.now()
        collector.record_completion(Stamps(now, now, now))


def assert_close(estimate: float, truth: float, relative_error: float = RELATIVE_ERROR) -> None:
    assert abs(estimate - truth) <= (relative_error + EPS) * truth, (estimate, truth)


def uniform(rng: random.Random) -> float:
    return rng.uniform(0.001, 2.0)


def lognormal(rng: random.Random) -> float:
    return rng.lognormvariate(-4.0, 1.5)


def bimodal(rng: random.Random) -> float:
    if rng.random() < 0.9:
        return rng.gauss(0.005, 0.001) or 0.005
    return rng.gauss(1.5, 0.2)


def exponential(rng: random.Random) -> float:
    return rng.expovariate(20.0)


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "uniform": uniform,
    "lognormal": lognormal,
    "bimodal": bimodal,
    "exponential": exponential,
}


class TestCounts:
    """Completed, failed and retried counts, and the success/failure rates derived from them."""

    def test_empty(self) -> None:
        metrics = tasker.Collector(clock=FakeClock()).metrics()
        assert metrics == tasker.TaskMetrics()
        assert metrics.success_rate == 0.0
        assert metrics.failure_rate == 0.0

    def test_counts(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        for _ in range(3):
            collector.record_completion(Stamps(0.0, 0.0, 1.0))
        collector.record_failure(Stamps(0.0, 0.0, 1.0))
        for _ in range(5):
            collector.record_retry()
        m = collector.metrics()
        counts = (m.total_tasks_completed, m.total_tasks_failed, m.total_tasks_retried, m.success_rate, m.failure_rate)
        assert counts == (3, 1, 5, 0.75, 0.25)

    def test_retries_and_arrivals_are_not_terminal(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        collector.record_retry()
        collector.record_arrival()
        metrics = collector.metrics()
        assert (metrics.success_rate, metrics.failure_rate) == (0.0, 0.0)
        assert metrics.total_tasks_completed == metrics.total_tasks_failed == 0

    def test_only_failures(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        collector.record_failure(Stamps(0.0, 0.0, 0.0))
        collector.record_failure(Stamps(0.0, 0.0, 1.0))
        metrics = collector.metrics()
        assert (metrics.success_rate, metrics.failure_rate) == (0.0, 1.0)


class TestExecutionStats:
    """Min, max and means are exact; tasks that never ran do not count into them."""

    def test_min_max_avg_exact_and_from_successes_only(self) -> None:
        # Seed: RecordCompletion "updates internal metrics for total tasks completed,
        # execution time, wait time, and min/max/percentile execution times";
        # RecordFailure only "increments internal counter for total tasks failed".
        collector = tasker.Collector(clock=FakeClock())
        collector.record_completion(Stamps(0.0, 1.0, 1.5))  # ran 0.5, waited 1.0
        collector.record_completion(Stamps(2.0, 2.0, 3.5))  # ran 1.5, waited 0.0
        collector.record_failure(Stamps(1.0, 3.0, 7.0))  # ran 4.0, waited 2.0: not timed
        collector.record_cancellation(Stamps(1.0, 9.0, 9.5))  # not timed either
        metrics = collector.metrics()
        assert metrics.min_execution_time == 0.5
        assert metrics.max_execution_time == 1.5
        assert metrics.p99_execution_time == pytest.approx(1.5, rel=0.01)
        assert metrics.average_execution_time == 1.0
        assert metrics.average_wait_time == 0.5
        assert (metrics.total_tasks_completed, metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (2, 1, 1)

    def test_failure_is_counted_but_not_timed(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        collector.record_failure(Stamps(0.0, 50.0, 50.0))
        metrics = collector.metrics()
        assert metrics.total_tasks_failed == 1
        assert timing(metrics) == timed(0.0, 0.0)

    def test_never_ran_does_not_dilute_means(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        collector.record_failure(Stamps(0.0, 50.0, 50.0))
        collector.record_completion(Stamps(1.0, 3.0, 5.0))
        collector.record_failure(Stamps(0.0, 60.0, 60.0))
        metrics = collector.metrics()
        assert timing(metrics) == timed(2.0, 2.0)
        assert metrics.total_tasks_failed == 2
        assert metrics.success_rate == pytest.approx(1 / 3)

    @pytest.mark.parametrize("durations", [[0.0] * 10, [0.25] * 100, [3.7]], ids=["zero", "identical", "single"])
    def test_equal_durations_are_exact(self, durations: list[float]) -> None:
        # collector_with queues every task at -1 and starts it at 0: each waited 1 s.
        assert timing(collector_with(durations).metrics()) == timed(durations[0], 1.0)


class TestPercentiles:
    """p95/p99 are within the stated relative error of the true sample at that rank."""

    @pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
    @pytest.mark.parametrize("n", [7, 100, 1000, 20_000])
    def test_distributions(self, name: str, n: int) -> None:
        rng = random.Random(f"{name}-{n}")
        durations = [DISTRIBUTIONS[name](rng) for _ in range(n)]
        assert min(durations) > 0
        metrics = collector_with(durations).metrics()
        assert_close(metrics.p95_execution_time, true_percentile(durations, 0.95))
        assert_close(metrics.p99_execution_time, true_percentile(durations, 0.99))
        assert metrics.min_execution_time == min(durations)
        assert metrics.max_execution_time == max(durations)
        assert metrics.average_execution_time == pytest.approx(sum(durations) / n, rel=1e-9)

    @pytest.mark.parametrize("relative_error", [0.001, 0.05, 0.2])
    def test_other_relative_errors(self, relative_error: float) -> None:
        rng = random.Random(7)
        durations = [lognormal(rng) for _ in range(5000)]
        metrics = collector_with(durations, relative_error).metrics()
        assert_close(metrics.p95_execution_time, true_percentile(durations, 0.95), relative_error)
        assert_close(metrics.p99_execution_time, true_percentile(durations, 0.99), relative_error)

    def test_coarse_sketch_is_really_coarse(self) -> None:
        """With a 20% bound the estimate is generally not exact: the sketch is what answers."""
        rng = random.Random(11)
        durations = [uniform(rng) for _ in range(1000)]
        metrics = collector_with(durations, 0.2).metrics()
        assert metrics.p95_execution_time != true_percentile(durations, 0.95)

    def test_percentile_tracks_a_shift(self) -> None:
        collector = collector_with([0.01] * 96)
        assert collector.metrics().p95_execution_time == 0.01
        for _ in range(4):
            collector.record_completion(Stamps(0.0, 0.0, 2.0))
        metrics = collector.metrics()
        assert metrics.p95_execution_time == pytest.approx(0.01, rel=RELATIVE_ERROR)
        assert metrics.p99_execution_time == pytest.approx(2.0, rel=RELATIVE_ERROR)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.floats(min_value=1e-8, max_value=1e5, allow_nan=False, allow_infinity=False),
            min_size=1,
            max_size=300,
        )
    )
    def test_property_within_relative_error(self, durations: list[float]) -> None:
        metrics = collector_with(durations).metrics()
        low, high = min(durations), max(durations)
        for q, estimate in ((0.95, metrics.p95_execution_time), (0.99, metrics.p99_execution_time)):
            assert low <= estimate <= high
            assert_close(estimate, true_percentile(durations, q))
        assert metrics.p95_execution_time <= metrics.p99_execution_time
        assert metrics.min_execution_time == low
        assert metrics.max_execution_time == high


def _containers(obj: Any, prefix: str = "", depth: int = 0) -> dict[str, int]:
    """The length of every container reachable from ``obj`` through tasker's own objects."""
    found: dict[str, int] = {}
    names = list(vars(obj)) if hasattr(obj, "__dict__") else []
    for cls in type(obj).__mro__:
        names += [n for n in getattr(cls, "__slots__", ()) if n not in names]
    for name in names:
        value = getattr(obj, name, None)
        path = f"{prefix}{name}"
        if isinstance(value, (list, dict, set, tuple, deque, bytearray)):
            found[path] = len(value)
        elif depth < 3 and type(value).__module__.startswith("tasker."):
            found.update(_containers(value, f"{path}.", depth + 1))
    return found


def _feed(collector: tasker.Collector, clock: FakeClock, rng: random.Random, start: int, stop: int) -> None:
    for i in range(start, stop):
        if i % 100 == 0:
            clock.advance(0.37)
        collector.record_arrival()
        took = lognormal(rng)
        now = clock.now()
        if i % 10:
            collector.record_completion(Stamps(now, now, now + took))
        else:
            collector.record_failure(Stamps(now, now + took if i % 20 else now, now + took))
        if i % 1000 == 0:
            collector.record_retry()


class TestMemory:
    """Memory is bounded: recording ten times more tasks grows no structure."""

    def test_structures_do_not_grow(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        rng = random.Random(3)
        _feed(collector, clock, rng, 0, 10_000)
        collector.metrics()
        before = _containers(collector)
        assert "_buckets" in before
        assert len(before) >= 3  # the histogram and the two rate windows' storage
        bucket_bytes = sys.getsizeof(collector._buckets)
        _feed(collector, clock, rng, 10_000, 100_000)
        collector.metrics()
        assert _containers(collector) == before
        assert sys.getsizeof(collector._buckets) == bucket_bytes
        metrics = collector.metrics()
        assert metrics.total_tasks_completed + metrics.total_tasks_failed == 100_000

    def test_bucket_count_is_independent_of_samples(self) -> None:
        few = collector_with([0.1])
        many = collector_with([float(i % 977 + 1) / 1000 for i in range(20_000)])
        assert len(few._buckets) == len(many._buckets)


class TestRates:
    """Arrival and completion rates are per second over the recent window, on the collector's clock."""

    def drive(self, clock: FakeClock, collector: tasker.Collector, seconds: float, per_second: int) -> None:
        for _ in range(round(seconds * per_second)):
            clock.advance(1 / per_second)
            collector.record_arrival()
            now = clock.now()
            collector.record_completion(Stamps(now, now, now))

    def test_steady_rate(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        self.drive(clock, collector, 20, 10)
        metrics = collector.metrics()
        assert metrics.task_arrival_rate == pytest.approx(10.0, rel=0.02)
        assert metrics.task_completion_rate == pytest.approx(10.0, rel=0.02)

    def test_rate_before_a_full_window(self) -> None:
        clock = FakeClock(start=500.0)
        collector = tasker.Collector(clock=clock, window=10.0)
        self.drive(clock, collector, 2, 10)
        assert collector.metrics().task_arrival_rate == pytest.approx(10.0, rel=0.02)

    def test_rate_follows_a_change(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock, window=5.0)
        self.drive(clock, collector, 20, 10)
        self.drive(clock, collector, 10, 40)
        assert collector.metrics().task_arrival_rate == pytest.approx(40.0, rel=0.02)

    def test_silence_reads_zero(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        self.drive(clock, collector, 20, 10)
        clock.advance(30.0)
        metrics = collector.metrics()
        assert metrics.task_arrival_rate == 0.0
        assert metrics.task_completion_rate == 0.0
        assert metrics.total_tasks_completed == 200

    def test_rate_after_a_long_silence(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock, window=10.0)
        self.drive(clock, collector, 10, 10)
        clock.advance(30.0)
        self.drive(clock, collector, 10, 10)  # a full window at 10/s again
        metrics = collector.metrics()
        assert metrics.task_arrival_rate == pytest.approx(10.0, rel=0.06)
        assert metrics.task_completion_rate == pytest.approx(10.0, rel=0.06)

    def test_half_window_of_silence_halves_the_rate(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock, window=10.0)
        self.drive(clock, collector, 20, 10)
        clock.advance(5.0)
        assert collector.metrics().task_arrival_rate == pytest.approx(5.0, rel=0.1)

    def test_only_successes_count_in_the_completion_rate(self) -> None:
        # Seed: TaskCompletionRate "is the number of tasks being successfully completed
        # per second, calculated over a recent time window".
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        for _ in range(40):
            clock.advance(0.25)
            now = clock.now()
            collector.record_failure(Stamps(now, now, now))
            collector.record_cancellation(Stamps(now, now, now))
            collector.record_retry()
        assert collector.metrics().task_completion_rate == 0.0
        complete(collector, clock, 40, every=0.25)
        metrics = collector.metrics()
        assert metrics.task_completion_rate == pytest.approx(4.0, rel=0.05)
        assert metrics.task_arrival_rate == 0.0

    def test_completion_rate_uses_finish_stamps(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock)
        clock.advance(100.0)
        collector.record_completion(Stamps(1.0, 2.0, 3.0))  # finished long ago
        assert collector.metrics().task_completion_rate == 0.0
        assert collector.metrics().total_tasks_completed == 1


class TestBuffering:
    """Completions are buffered and folded in batches: what metrics() reports is unchanged."""

    def feed(
        self, collector: tasker.Collector, clock: FakeClock, n: int, read_each: bool, instant_every: int = 0
    ) -> list[tasker.TaskMetrics]:
        rng = random.Random(5)
        seen = []
        for i in range(n):
            clock.advance(rng.expovariate(200.0))  # ~200 per second: several windows in all
            now = clock.now()
            collector.record_arrival()
            if instant_every and i % instant_every == 0:
                collector.record_completion(Stamps(now - 0.01, now, now))  # took no time: bucket 0
            elif i % 7:
                collector.record_completion(Stamps(now - 0.01, now - 0.005, now + lognormal(rng)))
            else:
                collector.record_failure(Stamps(now, now, now))
            if read_each or i % 997 == 0:
                seen.append(collector.metrics())
        seen.append(collector.metrics())
        return seen

    def test_same_metrics_as_folding_each_record_at_once(self) -> None:
        n = 3 * tasker._metrics.FOLD_EVERY + 123
        eager_clock, lazy_clock = FakeClock(), FakeClock()
        eager = self.feed(tasker.Collector(clock=eager_clock), eager_clock, n, read_each=True)
        lazy = self.feed(tasker.Collector(clock=lazy_clock), lazy_clock, n, read_each=False)
        # The same records in the same order: equal, up to the rounding of the sums (3.12's
        # sum() compensates it, so a batch can be more exact than one record at a time).
        assert attrs.asdict(lazy[-1]) == pytest.approx(attrs.asdict(eager[-1]), rel=1e-12, abs=0)
        assert lazy[-1].total_tasks_completed == n - (n + 6) // 7
        assert lazy[-1].task_completion_rate > 0

    def test_same_metrics_with_instant_tasks_in_the_batches(self) -> None:
        # A batch holding an execution time of 0 takes the per-record path for the histogram.
        n = 2 * tasker._metrics.FOLD_EVERY + 77
        eager_clock, lazy_clock = FakeClock(), FakeClock()
        eager = self.feed(tasker.Collector(clock=eager_clock), eager_clock, n, read_each=True, instant_every=13)
        lazy = self.feed(tasker.Collector(clock=lazy_clock), lazy_clock, n, read_each=False, instant_every=13)
        assert lazy[-1] == eager[-1]
        assert lazy[-1].min_execution_time == 0.0

    def test_the_buffer_stays_bounded(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        for _ in range(5 * tasker._metrics.FOLD_EVERY + 1):
            collector.record_completion(Stamps(0.0, 0.0, 1.0))
            collector.record_arrival()
            assert all(len(pending) < tasker._metrics.FOLD_EVERY for pending in collector.pending_completions)
            assert len(collector.pending_arrivals) < tasker._metrics.FOLD_EVERY
        assert collector.metrics().total_tasks_completed == 5 * tasker._metrics.FOLD_EVERY + 1
        assert collector.pending_completions == ([], [], []) and collector.pending_arrivals == []

    def test_completion_rate_of_buffered_records_uses_their_finish_times(self) -> None:
        clock = FakeClock()
        collector = tasker.Collector(clock=clock, window=10.0)
        complete(collector, clock, 100, every=0.0)  # 100 completions 30 s ago, still buffered
        clock.advance(30.0)
        complete(collector, clock, 50, every=0.1)  # then 50 over the last 5 s
        metrics = collector.metrics()
        assert metrics.task_completion_rate == pytest.approx(5.0, rel=0.1)
        assert metrics.total_tasks_completed == 150


class TestValidation:
    """Bad construction arguments raise ValueError."""

    @pytest.mark.parametrize("relative_error", [0.0, -0.01, 0.5, 0.9, 1.0, math.nan])
    def test_relative_error(self, relative_error: float) -> None:
        with pytest.raises(ValueError, match="relative_error"):
            tasker.Collector(relative_error=relative_error)

    @pytest.mark.parametrize("window", [0.0, -1.0, math.nan])
    def test_window(self, window: float) -> None:
        with pytest.raises(ValueError, match="window"):
            tasker.Collector(window=window)

    def test_real_clock_by_default(self) -> None:
        collector = tasker.Collector()
        collector.record_arrival()
        assert collector.metrics().task_arrival_rate >= 0.0


class TestDefaultCollectorFedDirectly:
    """The manager feeds the default collector directly only when it reads the manager's clock."""

    def test_same_clock_fast_other_clock_or_subclass_through_the_methods(self) -> None:
        clock = FakeClock()

        class Sub(tasker.Collector):
            pass

        cases = [(tasker.Collector(clock=clock), True), (tasker.Collector(), False), (Sub(clock=clock), False)]
        for collector, fast in cases:
            config = tasker.Config(on_create=lambda: 1, worker_count=1, clock=clock, collector=collector)
            manager: tasker.TaskManager[int, int] = tasker.TaskManager(config)
            assert (manager._core.fast is collector) is fast
            assert [manager.queue_task(lambda ctx, r: 7) for _ in range(3)] == [7, 7, 7]
            assert manager.metrics().total_tasks_completed == 3
            manager.stop()

    def test_failures_and_cancellations_are_counted_in_place_whatever_its_clock(self) -> None:
        clock = FakeClock()
        for collector in (tasker.Collector(clock=clock), tasker.Collector()):
            config = tasker.Config(
                on_create=lambda: 1, worker_count=1, max_worker_count=1, clock=clock, collector=collector
            )
            manager: tasker.TaskManager[int, int] = tasker.TaskManager(config)
            assert manager._core.counts is collector
            gate, held = hold_the_worker(manager)
            failing = [manager.submit(raising(ValueError(str(i)))) for i in range(3)]
            cancelled = [manager.submit(lambda ctx, r: 0) for _ in range(4)]
            assert all(reply.cancel() for reply in cancelled)
            gate.release.set()
            for reply in failing:
                with pytest.raises(ValueError):
                    reply.get()
            assert held.get() == "gate"
            metrics = manager.metrics()
            assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (3, 4)
            assert (metrics.total_tasks_completed, metrics.failure_rate) == (1, 0.75)
            manager.stop()

    def test_any_other_collector_gets_every_failure_and_cancellation_with_its_stamps_at_once(self) -> None:
        clock = FakeClock()
        records: list[tuple[str, Stamps]] = []

        class Sub(tasker.Collector):
            def record_failure(self, stamps: Stamps) -> None:
                records.append(("failure", stamps))
                super().record_failure(stamps)

            def record_cancellation(self, stamps: Stamps) -> None:
                records.append(("cancellation", stamps))
                super().record_cancellation(stamps)

        collector = Sub(clock=clock)
        config = tasker.Config(
            on_create=lambda: 1, worker_count=1, max_worker_count=1, clock=clock, collector=collector
        )
        manager: tasker.TaskManager[int, int] = tasker.TaskManager(config)
        assert manager._core.counts is None
        gate, held = hold_the_worker(manager)
        clock.advance(1.0)
        queued = [manager.submit(lambda ctx, r: 0) for _ in range(3)]
        clock.advance(2.0)
        assert queued[1].cancel()
        assert records == [("cancellation", Stamps(1.0, 3.0, 3.0))]  # at once, with its stamps
        pulled = Event()

        def items() -> Iterator[int]:
            yield from range(5)
            pulled.set()

        results = manager.map(lambda ctx, r, i: i, items(), max_in_flight=10)  # behind the gate
        reader = gevent.spawn(next, results)
        assert pulled.wait(5)  # all five submitted; the reader waits for the first
        reader.kill()  # leaves the loop: the batch's cleanup, one record per item, at once
        assert [kind for kind, _ in records] == ["cancellation"] * 6
        assert all(stamps == Stamps(3.0, 3.0, 3.0) for _, stamps in records[1:])
        failing = manager.submit(raising(ValueError("x")))
        gate.release.set()
        with pytest.raises(ValueError):
            failing.get()
        assert held.get() == "gate"
        assert records[-1][0] == "failure" and records[-1][1].queued_at == 3.0
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (1, 6)
        manager.stop()
