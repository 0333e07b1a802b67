"""tasker.contrib.prometheus: counters, histograms and stats gauges, read from the exposition text."""

from __future__ import annotations

import importlib
import subprocess
import sys

import gevent
import pytest
from helpers import Gate, Healthy, Manager, Resources, Unhealthy, raising, returning
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tasker
from tasker import RetriesExhaustedError, TaskKilledError, TaskManager
from tasker.contrib.prometheus import PrometheusCollector, StatsCollector, register_stats
from tasker.testing import FakeClock

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of ``generate_latest(registry)``, keyed by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class TestCounters:
    """Arrivals, completions, failures and retries are exported as ``*_total`` counters."""

    def test_counts_every_lifecycle_event(self) -> None:
        registry = CollectorRegistry()
        resources = Resources()
        collector = PrometheusCollector(registry=registry)
        with Manager(resources.config(collector=collector, max_retries=1)) as manager:
            for i in range(5):
                assert manager.queue_task(returning(i)) == i
            with pytest.raises(Healthy):
                manager.queue_task(raising(Healthy()))
            with pytest.raises(RetriesExhaustedError):
                manager.queue_task(raising(Unhealthy()))
        samples = scrape(registry)
        assert value(samples, "tasker_tasks_arrived_total") == 7
        assert value(samples, "tasker_tasks_completed_total") == 5
        assert value(samples, "tasker_tasks_failed_total") == 2
        assert value(samples, "tasker_tasks_retried_total") == 1
        # One observation per successful task (the seed's RecordCompletion), not per attempt.
        assert value(samples, "tasker_task_execution_seconds_count") == 5
        assert value(samples, "tasker_task_wait_seconds_count") == 5

    def test_metrics_still_come_from_the_inner_collector(self) -> None:
        registry = CollectorRegistry()
        resources = Resources()
        collector = PrometheusCollector(registry=registry)
        assert isinstance(collector.inner, tasker.Collector)
        with Manager(resources.config(collector=collector)) as manager:
            manager.queue_task(lambda ctx, r: None)
            with pytest.raises(Healthy):
                manager.queue_task(raising(Healthy()))
            metrics = manager.metrics()
        assert metrics.total_tasks_completed == 1
        assert metrics.total_tasks_failed == 1
        assert metrics.success_rate == 0.5

    def test_a_given_inner_collector_receives_every_event(self) -> None:
        registry = CollectorRegistry()
        inner = tasker.Collector()
        collector = PrometheusCollector(registry=registry, inner=inner)
        collector.record_arrival()
        collector.record_retry()
        collector.record_completion(tasker.TaskLifecycleTimestamps(1.0, 1.5, 2.0))
        assert collector.metrics() is not None
        assert inner.metrics().total_tasks_retried == 1
        assert inner.metrics().total_tasks_completed == 1
        assert inner.metrics().average_execution_time == 0.5


class TestHistograms:
    """Execution and wait times land in the right buckets, in seconds of the manager's clock."""

    def test_exact_times_on_a_fake_clock(self) -> None:
        registry = CollectorRegistry()
        clock = FakeClock()
        resources = Resources()
        collector = PrometheusCollector(registry=registry, clock=clock)
        config = resources.config(worker_count=1, max_worker_count=1, clock=clock, collector=collector)
        manager: Manager = TaskManager(config)

        def slow(ctx: tasker.Context, resource: int) -> str:
            clock.sleep(0.3)
            return "slow"

        first, second = manager.submit(slow), manager.submit(slow)
        gevent.idle()
        clock.advance(0.3)  # first ends; second starts at 0.3 after waiting 0.3
        clock.advance(0.3)
        assert first.get() == second.get() == "slow"
        manager.stop()
        samples = scrape(registry)
        assert value(samples, "tasker_task_execution_seconds_count") == 2
        assert value(samples, "tasker_task_execution_seconds_sum") == pytest.approx(0.6)
        assert value(samples, "tasker_task_execution_seconds_bucket", le="0.25") == 0
        assert value(samples, "tasker_task_execution_seconds_bucket", le="0.5") == 2
        assert value(samples, "tasker_task_wait_seconds_sum") == pytest.approx(0.3)
        assert value(samples, "tasker_task_wait_seconds_bucket", le="0.001") == 1
        assert value(samples, "tasker_task_wait_seconds_bucket", le="0.25") == 1
        assert value(samples, "tasker_task_wait_seconds_bucket", le="0.5") == 2
        assert value(samples, "tasker_task_wait_seconds_bucket", le="+Inf") == 2

    def test_tasks_dropped_by_kill_count_as_cancelled_without_timings(self) -> None:
        # Seed: TotalTasksFailed counts "tasks that have failed after all retry attempts
        # have been exhausted"; a kill is not that. Timings come from successes only.
        registry = CollectorRegistry()
        resources = Resources()
        collector = PrometheusCollector(registry=registry)
        manager: Manager = TaskManager(resources.config(worker_count=1, max_worker_count=1, collector=collector))
        gate = Gate()
        running, queued = manager.submit(gate), manager.submit(gate)
        gate.started.wait()
        manager.kill()
        for reply in (running, queued):
            with pytest.raises(TaskKilledError):
                reply.get()
        samples = scrape(registry)
        assert value(samples, "tasker_tasks_cancelled_total") == 2
        assert value(samples, "tasker_tasks_failed_total") == 0
        assert value(samples, "tasker_task_execution_seconds_count") == 0
        assert value(samples, "tasker_task_wait_seconds_count") == 0
        assert manager.metrics().total_tasks_cancelled == 2  # forwarded to the inner collector

    def test_custom_buckets(self) -> None:
        registry = CollectorRegistry()
        collector = PrometheusCollector(registry=registry, buckets=(1.0, 2.0))
        collector.record_completion(tasker.TaskLifecycleTimestamps(0.0, 0.0, 1.5))
        samples = scrape(registry)
        assert value(samples, "tasker_task_execution_seconds_bucket", le="1.0") == 0
        assert value(samples, "tasker_task_execution_seconds_bucket", le="2.0") == 1
        assert ("tasker_task_execution_seconds_bucket", (("le", "0.5"),)) not in samples


class TestStatsGauges:
    """register_stats exports workers, queue depths and the pool, read at scrape time."""

    def test_gauges_follow_the_manager(self) -> None:
        registry = CollectorRegistry()
        clock = FakeClock()
        resources = Resources()
        config = resources.config(worker_count=2, max_worker_count=4, resource_pool_size=1, clock=clock)
        manager: Manager = TaskManager(config)
        register_stats(manager, registry=registry)
        gate = Gate()
        replies = [manager.submit(gate) for _ in range(2)]
        gevent.idle()  # both base workers are busy
        replies += [manager.submit(gate) for _ in range(3)]
        replies.append(manager.submit(gate, priority=True))
        samples = scrape(registry)
        assert value(samples, "tasker_workers", kind="base") == 2
        assert value(samples, "tasker_workers", kind="burst") == 0
        assert value(samples, "tasker_active_workers") == 2  # base + burst, the seed's meaning
        assert value(samples, "tasker_busy_workers") == 2
        assert value(samples, "tasker_queued_tasks", lane="main") == 3
        assert value(samples, "tasker_queued_tasks", lane="priority") == 1
        assert value(samples, "tasker_available_resources") == 1
        assert value(samples, "tasker_blocked_submitters") == 0

        clock.advance(config.burst_interval)  # backlog, no idle worker: one burst worker (step 1)
        samples = scrape(registry)
        assert value(samples, "tasker_workers", kind="burst") == 1
        assert value(samples, "tasker_active_workers") == 3
        assert value(samples, "tasker_busy_workers") == 3
        assert value(samples, "tasker_queued_tasks", lane="priority") == 0  # priority first
        assert value(samples, "tasker_queued_tasks", lane="main") == 3

        gate.release.set()
        assert [r.get() for r in replies] == ["gate"] * 6
        manager.stop()
        samples = scrape(registry)
        assert value(samples, "tasker_workers", kind="base") == 0
        assert value(samples, "tasker_active_workers") == 0
        assert value(samples, "tasker_busy_workers") == 0

    def test_untrack_removes_the_manager(self) -> None:
        registry = CollectorRegistry()
        resources = Resources()
        with Manager(resources.config()) as manager:
            stats = register_stats(manager, registry=registry)
            assert ("tasker_active_workers", ()) in scrape(registry)
            stats.untrack(manager)
            samples = scrape(registry)
        assert ("tasker_active_workers", ()) not in samples

    def test_label_names_must_match(self) -> None:
        resources = Resources()
        stats = StatsCollector(labelnames=("manager",))
        with Manager(resources.config()) as manager, pytest.raises(ValueError, match="manager"):
            stats.track(manager, {"app": "x"})


class TestSeveralManagers:
    """Managers told apart by labels share one registry; clashing names are refused."""

    def test_labelled_managers_share_the_families(self) -> None:
        registry = CollectorRegistry()
        res_a, res_b = Resources(), Resources()
        col_a = PrometheusCollector(registry=registry, labels={"manager": "a"})
        col_b = PrometheusCollector(registry=registry, labels={"manager": "b"})
        with (
            Manager(res_a.config(worker_count=1, collector=col_a)) as a,
            Manager(res_b.config(worker_count=3, collector=col_b)) as b,
        ):
            register_stats(a, registry=registry, labels={"manager": "a"})
            register_stats(b, registry=registry, labels={"manager": "b"})
            for _ in range(2):
                a.queue_task(lambda ctx, r: None)
            for _ in range(3):
                b.queue_task(lambda ctx, r: None)
            samples = scrape(registry)
        assert value(samples, "tasker_tasks_completed_total", manager="a") == 2
        assert value(samples, "tasker_tasks_completed_total", manager="b") == 3
        assert value(samples, "tasker_workers", manager="a", kind="base") == 1
        assert value(samples, "tasker_workers", manager="b", kind="base") == 3

    def test_unlabelled_collectors_on_one_registry_add_up(self) -> None:
        registry = CollectorRegistry()
        first = PrometheusCollector(registry=registry)
        second = PrometheusCollector(registry=registry)
        first.record_arrival()
        second.record_arrival()
        assert value(scrape(registry), "tasker_tasks_arrived_total") == 2

    def test_namespaces_keep_managers_apart(self) -> None:
        registry = CollectorRegistry()
        PrometheusCollector(registry=registry, namespace="fetch").record_arrival()
        samples = scrape(registry)
        assert value(samples, "fetch_tasks_arrived_total") == 1
        assert ("tasker_tasks_arrived_total", ()) not in samples

    def test_clashing_label_names_raise(self) -> None:
        registry = CollectorRegistry()
        PrometheusCollector(registry=registry, labels={"manager": "a"})
        with pytest.raises(ValueError, match="Duplicated"):
            PrometheusCollector(registry=registry)


    def test_two_managers_with_the_same_labels_are_refused(self) -> None:
        """Regression: both were tracked, and the page carried duplicate series, which
        Prometheus refuses."""
        registry = CollectorRegistry()
        res_a, res_b = Resources(), Resources()
        with Manager(res_a.config()) as a, Manager(res_b.config()) as b:
            register_stats(a, registry=registry, labels={"manager": "x"})
            with pytest.raises(ValueError, match="another tracked manager"):
                register_stats(b, registry=registry, labels={"manager": "x"})
            register_stats(a, registry=registry, labels={"manager": "x"})  # the same one again is fine
            samples = scrape(registry)
        assert value(samples, "tasker_active_workers", manager="x") == 2

    @pytest.mark.parametrize("name", ["kind", "lane", "key", "__name__", ""])
    def test_label_names_the_gauges_use_or_prometheus_reserves_are_refused(self, name: str) -> None:
        """Regression: "kind", "lane" and "key" were overwritten by the gauges' own, and
        "__name__" made a page that does not parse."""
        with pytest.raises(ValueError, match="label name"):
            StatsCollector(labelnames=(name,))


class TestMissingDependency:
    """Without prometheus_client the import fails with a message naming the extra."""

    def test_import_error_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        monkeypatch.delitem(sys.modules, "tasker.contrib.prometheus")
        with pytest.raises(ImportError, match=r"tasker\[prometheus\]"):
            importlib.import_module("tasker.contrib.prometheus")

    def test_tasker_itself_does_not_import_it(self) -> None:
        code = "import sys, tasker, tasker.contrib; assert 'prometheus_client' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class TestKeysAndTransientRetries:
    """Per-key in-flight gauges (top keys only), delayed messages, and transient retries apart."""

    def test_keys_delayed_and_transient_retries(self) -> None:
        registry = CollectorRegistry()
        clock = FakeClock()
        resources = Resources()
        policy = tasker.RetryPolicy(retry_on=(Healthy,), base_delay=1.0, jitter=False)
        config = resources.config(
            worker_count=3, max_worker_count=3, resource_pool_size=0, clock=clock, key_concurrency=1,
            collector=PrometheusCollector(registry=registry, clock=clock), retry=policy,
        )  # fmt: skip
        manager: Manager = TaskManager(config)
        register_stats(manager, registry=registry)
        gate = Gate()
        held = [manager.submit(gate, key=host) for host in ("a.example", "b.example")]
        waiting = manager.submit(gate, key="a.example")
        failing = manager.submit(raising(Healthy()))
        gevent.idle()
        clock.advance(0)
        samples = scrape(registry)
        assert value(samples, "tasker_key_in_flight", key="a.example") == 1
        assert value(samples, "tasker_key_in_flight", key="b.example") == 1
        assert value(samples, "tasker_key_waiting_tasks") == 1
        assert value(samples, "tasker_delayed_tasks") == 1
        assert value(samples, "tasker_transient_retries_total") == 1
        assert value(samples, "tasker_tasks_retried_total") == 0  # unhealthy redeliveries only
        gate.release.set()
        assert [r.get() for r in [*held, waiting]] == ["gate"] * 3
        for _ in range(4):
            clock.advance(4.0)
        assert isinstance(failing.exception, RetriesExhaustedError)
        assert manager.metrics().total_transient_retries == 3  # forwarded to the inner collector
        manager.stop()
        samples = scrape(registry)
        assert value(samples, "tasker_transient_retries_total") == 3
        assert value(samples, "tasker_delayed_tasks") == 0
        assert not any(name == "tasker_key_in_flight" for name, _ in samples)
