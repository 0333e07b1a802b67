"""Stats and metrics mean what the seed's Go docs say; each test quotes the words it checks.

The quotes are from ``shared/seeds/go-package-doc-v1.txt`` (the ``TaskStats``,
``TaskMetrics`` and ``MetricsCollector`` doc comments) and
``shared/seeds/interfaces-reference.md`` (the ``RecordCompletion`` and
``RecordFailure`` side effects).
"""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
import pytest
from helpers import Gate, Healthy, Manager, Resources, Unhealthy, hold_the_worker, raising, returning

import tasker
from tasker import CancelledError, TaskKilledError, TaskManager
from tasker.testing import FakeClock

Stamps = tasker.TaskLifecycleTimestamps


class SeedCollector:
    """A collector written the seed's way: four record methods and ``metrics``, no more.

    Like the seed's ``MyCustomMetricsCollector`` it computes ``FinishedAt.Sub(StartedAt)``,
    here in every record, so a missing timestamp would raise ``TypeError``.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []

    def _stamp(self, kind: str, stamps: Stamps) -> None:
        self.events.append((kind, stamps.finished_at - stamps.started_at, stamps.started_at - stamps.queued_at))

    def record_arrival(self) -> None:
        self.events.append(("arrival", 0.0, 0.0))

    def record_completion(self, stamps: Stamps) -> None:
        self._stamp("completion", stamps)

    def record_failure(self, stamps: Stamps) -> None:
        self._stamp("failure", stamps)

    def record_retry(self) -> None:
        self.events.append(("retry", 0.0, 0.0))

    def metrics(self) -> tasker.TaskMetrics:
        return tasker.TaskMetrics()

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


class TestActiveWorkers:
    """Seed, TaskStats: "ActiveWorkers int32 // Total number of currently active workers (base + burst)"."""

    def test_idle_base_workers_are_active(self) -> None:
        res = Resources()
        with Manager(res.config(worker_count=3, max_worker_count=3)) as manager:
            stats = manager.stats()
            assert (stats.active_workers, stats.busy_workers) == (3, 0)

    def test_burst_workers_are_active_too_and_busy_counts_running_tasks(self) -> None:
        clock = FakeClock()
        res = Resources()
        config = res.config(worker_count=1, max_worker_count=3, clock=clock)
        manager: Manager = TaskManager(config)
        gate = Gate()
        replies = [manager.submit(gate) for _ in range(4)]
        gate.started.wait()
        clock.advance(config.burst_interval)  # backlog and no idle worker: one burst worker (step 1)
        gevent.idle()
        stats = manager.stats()
        assert (stats.base_workers, stats.burst_workers) == (1, 1)
        assert stats.active_workers == stats.base_workers + stats.burst_workers == 2
        assert stats.busy_workers == 2
        gate.release.set()
        assert [r.get() for r in replies] == ["gate"] * 4
        assert manager.stats().busy_workers == 0
        assert manager.stop() is True


class TestCompletionRate:
    """Seed, TaskMetrics: "TaskCompletionRate is the number of tasks being successfully
    completed per second, calculated over a recent time window"."""

    def test_six_failures_are_no_completions(self) -> None:
        clock = FakeClock()
        res = Resources()
        collector = tasker.Collector(clock=clock)
        with Manager(res.config(collector=collector, clock=clock)) as manager:
            for _ in range(6):
                with pytest.raises(Healthy):
                    manager.queue_task(raising(Healthy()))
            clock.advance(1.0)
            metrics = manager.metrics()
        assert metrics.total_tasks_completed == 0
        assert metrics.task_completion_rate == 0.0
        assert metrics.total_tasks_failed == 6

    def test_successes_are(self) -> None:
        clock = FakeClock()
        res = Resources()
        collector = tasker.Collector(clock=clock, window=10.0)
        with Manager(res.config(collector=collector, clock=clock)) as manager:
            for i in range(20):
                assert manager.queue_task(returning(i)) == i
                with pytest.raises(Healthy):
                    manager.queue_task(raising(Healthy()))
                clock.advance(0.5)  # 20 successes over 10 s
            assert manager.metrics().task_completion_rate == pytest.approx(2.0, rel=0.1)


class TestTimingsFromSuccesses:
    """Seed, interfaces-reference: RecordCompletion "Updates internal metrics for total tasks
    completed, execution time, wait time, and min/max/percentile execution times";
    RecordFailure: "Increments internal counter for total tasks failed"."""

    def test_a_slow_failure_moves_no_timing(self) -> None:
        clock = FakeClock()
        res = Resources()
        collector = tasker.Collector(clock=clock)
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector, clock=clock))

        def taking(seconds: float, fail: bool) -> Any:
            def task(ctx: tasker.Context, resource: int) -> str:
                clock.sleep(seconds)
                if fail:
                    raise Healthy("slow and failing")
                return "ok"

            return task

        replies = [manager.submit(taking(0.2, False)) for _ in range(3)] + [manager.submit(taking(0.7, True))]
        for _ in range(4):
            gevent.idle()
            clock.advance(0.2)
        clock.advance(0.5)
        assert [r.get() for r in replies[:3]] == ["ok"] * 3
        assert isinstance(replies[3].exception, Healthy)
        metrics = manager.metrics()
        assert metrics.max_execution_time == pytest.approx(0.2)
        assert metrics.p99_execution_time == pytest.approx(0.2, rel=0.01)
        assert metrics.average_execution_time == pytest.approx(0.2)
        assert metrics.average_wait_time == pytest.approx(0.2)  # 0, 0.2 and 0.4 s in the queue
        assert (metrics.total_tasks_completed, metrics.total_tasks_failed) == (3, 1)
        assert manager.stop() is True


class TestRunTaskRecorded:
    """Seed, TaskMetrics: "TotalTasksCompleted is the total count of tasks that have
    completed successfully since the TaskManager started" — run_task ones included."""

    def test_two_successful_run_task_calls_count(self) -> None:
        res = Resources()
        with Manager(res.config()) as manager:
            assert manager.run_task(returning("a")) == "a"
            assert manager.run_task(returning("b")) == "b"
            metrics = manager.metrics()
        assert metrics.total_tasks_completed == 2
        assert metrics.success_rate == 1.0

    def test_arrival_completion_failure_and_kill_of_run_task(self) -> None:
        collector = SeedCollector()
        cancels: list[Stamps] = []
        collector.record_cancellation = cancels.append  # type: ignore[attr-defined]
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, resource_pool_size=1, collector=collector))
        assert manager.run_task(returning(1)) == 1
        with pytest.raises(Healthy):
            manager.run_task(raising(Healthy()))
        gate = Gate()
        caller = gevent.spawn(manager.run_task, gate)
        gate.started.wait()
        manager.kill()
        with pytest.raises(TaskKilledError):
            caller.get()
        assert collector.kinds() == ["arrival", "completion", "arrival", "failure", "arrival"]
        assert len(cancels) == 1 and cancels[0].started_at <= cancels[0].finished_at

    def test_a_temporary_resource_that_cannot_be_made_is_a_failure(self) -> None:
        collector = SeedCollector()
        res = Resources(fail_on={3})  # calls 1 and 2 make the base worker and the pool's one
        with Manager(res.config(worker_count=1, resource_pool_size=1, collector=collector)) as manager:
            gate = Gate()
            holder = gevent.spawn(manager.run_task, gate)  # takes the pooled resource
            gate.started.wait()
            with pytest.raises(tasker.ResourceCreationError):
                manager.run_task(returning("never"))
            gate.release.set()
            assert holder.get() == "gate"
        assert collector.kinds() == ["arrival", "arrival", "failure", "completion"]
        assert collector.events[2][1] == 0.0  # it never ran: no execution time


    @pytest.mark.parametrize("where", ["task", "on_create"])
    def test_its_own_base_exception_is_a_failure_as_when_queued(self, where: str) -> None:
        """Regression: a BaseException the task (or the temporary's on_create) raised
        itself was counted as a cancellation, where a queued task's counts as a failure."""

        class Abort(BaseException):
            pass

        collector = SeedCollector()
        cancels: list[Stamps] = []
        collector.record_cancellation = cancels.append  # type: ignore[attr-defined]
        made = 0

        def create() -> int:
            nonlocal made
            made += 1
            if where == "on_create" and made == 2:  # the base worker's is made; run_task's fails
                raise Abort("on_create's own")
            return made

        config = tasker.Config(on_create=create, worker_count=1, resource_pool_size=0, collector=collector)
        with Manager(config) as manager:
            with pytest.raises(Abort):
                manager.run_task(raising(Abort("the task's own")) if where == "task" else returning("never"))
        assert collector.kinds() == ["arrival", "failure"]
        assert cancels == []


class TestCancelsAreNotFailures:
    """Seed, TaskMetrics: "TotalTasksFailed is the total count of tasks that have failed
    after all retry attempts have been exhausted" — a cancel or a kill is not that."""

    def test_three_cancels(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        gate, held = hold_the_worker(manager)
        queued = [manager.submit(returning(i)) for i in range(3)]
        assert all(reply.cancel() for reply in queued)
        gate.release.set()
        assert held.get() == "gate"
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (0, 3)
        assert (metrics.failure_rate, metrics.success_rate) == (0.0, 1.0)
        assert manager.stop() is True

    def test_kill_drops_and_interrupts_are_cancellations(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1))
        _, running = hold_the_worker(manager)
        queued = manager.submit(returning("never"))
        manager.kill()
        assert isinstance(running.exception, TaskKilledError)
        assert isinstance(queued.exception, TaskKilledError)
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled, metrics.failure_rate) == (0, 2, 0.0)

    def test_a_task_that_gives_up_on_its_cancelled_context_is_cancelled(self) -> None:
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1))
        started = gevent.event.Event()

        def cooperative(ctx: tasker.Context, resource: int) -> None:
            started.set()
            ctx.wait()
            ctx.check()

        reply = manager.submit(cooperative)
        started.wait()
        assert reply.cancel() is True
        with pytest.raises(CancelledError):
            reply.get()
        metrics = manager.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled) == (0, 1)
        assert manager.stop() is True

    def test_a_seed_collector_without_record_cancellation_is_not_told(self) -> None:
        collector = SeedCollector()
        res = Resources()
        manager: Manager = TaskManager(res.config(worker_count=1, max_worker_count=1, collector=collector))
        gate, held = hold_the_worker(manager)
        manager.submit(returning("x")).cancel()
        gate.release.set()
        assert held.get() == "gate"
        assert manager.stop() is True
        assert collector.kinds() == ["arrival", "arrival", "completion"]


class TestNoMissingTimestamp:
    """Seed, integration-reference: a collector computes ``s.FinishedAt.Sub(s.StartedAt)``.
    It must never receive a missing timestamp: a task that never ran has
    ``started_at == finished_at``."""

    def test_failed_while_queued_for_lack_of_a_worker(self) -> None:
        clock = FakeClock()
        collector = SeedCollector()
        res = Resources(fail_on=set(range(3, 100)))  # the base worker and the pool, then nothing
        config = res.config(worker_count=1, max_worker_count=1, collector=collector, clock=clock)
        manager: Manager = TaskManager(config)
        gate = Gate()
        first = manager.submit(raising(Unhealthy()))  # retires the only worker
        gevent.idle()
        queued = manager.submit(gate)
        clock.advance(0.3)
        assert isinstance(queued.exception, tasker.ResourceCreationError)
        assert first.ready()
        failures = [(took, waited) for kind, took, waited in collector.events if kind == "failure"]
        assert failures and all(took >= 0 and waited >= 0 for took, waited in failures)
        manager.kill()

    def test_the_default_collector_takes_the_same_stamps(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        collector.record_failure(Stamps(1.0, 5.0, 5.0))
        collector.record_cancellation(Stamps(1.0, 5.0, 5.0))
        metrics = collector.metrics()
        assert (metrics.total_tasks_failed, metrics.total_tasks_cancelled, metrics.max_execution_time) == (1, 1, 0.0)


class TestSubNanosecond:
    """README: durations under 1 ns share the histogram's first bucket, which reads as the
    shortest sample seen; the percentile is then exact when they are all equal."""

    def test_exactly_one_nanosecond_is_not_under_it(self) -> None:
        """Regression: 1 ns itself landed in the first bucket and read as the minimum (1 ps)."""
        collector = tasker.Collector(clock=FakeClock())
        collector.record_completion(Stamps(0.0, 0.0, 1e-12))
        for _ in range(99):
            collector.record_completion(Stamps(0.0, 0.0, 1e-9))
        metrics = collector.metrics()
        assert metrics.p95_execution_time == pytest.approx(1e-9, rel=0.01 + 1e-9)
        assert metrics.min_execution_time == 1e-12

    def test_99_samples_of_half_a_nanosecond(self) -> None:
        collector = tasker.Collector(clock=FakeClock())
        for _ in range(99):
            collector.record_completion(Stamps(0.0, 0.0, 5e-10))
        metrics = collector.metrics()
        assert metrics.p95_execution_time == metrics.min_execution_time == 5e-10
