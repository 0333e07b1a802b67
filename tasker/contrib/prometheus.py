"""Prometheus metrics for tasker managers (``pip install 'tasker[prometheus]'``).

Two pieces, usable together or apart:

- :class:`PrometheusCollector` is a :class:`tasker.MetricsCollector`: pass it as
  ``Config(collector=...)``. It counts every lifecycle event into Prometheus counters
  and histograms and hands the same events to an inner collector (a new
  :class:`tasker.Collector` by default), so ``manager.metrics()`` still works.
- :func:`register_stats` exports a manager's :meth:`~tasker.TaskManager.stats` as
  gauges. They are read when Prometheus scrapes (a custom collector), so a manager
  pays nothing between scrapes.

Exported names, with the default ``namespace="tasker"``::

    tasker_tasks_arrived_total            counter    accepted submissions
    tasker_tasks_completed_total          counter    tasks that succeeded
    tasker_tasks_failed_total             counter    tasks that failed for good
    tasker_tasks_cancelled_total          counter    tasks cancelled or dropped by kill()
    tasker_tasks_retried_total            counter    redeliveries after unhealthy failures
    tasker_transient_retries_total        counter    retries of healthy failures (RetryPolicy)
    tasker_task_execution_seconds         histogram  start to finish of tasks that succeeded
    tasker_task_wait_seconds              histogram  queueing to start, of tasks that succeeded
    tasker_workers{kind="base"|"burst"}   gauge      live workers
    tasker_active_workers                 gauge      live workers, base + burst (the seed's meaning)
    tasker_busy_workers                   gauge      workers running a task
    tasker_queued_tasks{lane="main"|"priority"}  gauge  messages waiting
    tasker_available_resources            gauge      free resources in the run_task pool
    tasker_blocked_submitters             gauge      submitters waiting for room
    tasker_delayed_tasks                  gauge      messages waiting out a retry backoff
    tasker_key_waiting_tasks              gauge      queued messages waiting for their key
    tasker_key_in_flight{key=...}         gauge      in-flight messages of the top 10 keys

Several managers can share one registry: give each its own ``labels`` (the same label
names for all of them, e.g. ``{"manager": "fetch"}`` and ``{"manager": "parse"}``);
collectors and gauges with the same registry, namespace and label names share their
metric families. Prometheus objects lock with ``threading.Lock``, which is cheap and
never blocks under gevent; serve the metrics from the same process, e.g. by mounting
``prometheus_client.make_wsgi_app(registry)`` in your gevent WSGI app.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .. import Clock, Collector, MetricsCollector, TaskLifecycleTimestamps, TaskManager, TaskMetrics

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import GaugeMetricFamily, Metric
except ImportError as exc:
    raise ImportError(
        "tasker.contrib.prometheus needs the prometheus_client package; "
        "install it with: pip install 'tasker[prometheus]'"
    ) from exc

__all__ = ["DEFAULT_BUCKETS", "PrometheusCollector", "StatsCollector", "register_stats"]

DEFAULT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bucket bounds in seconds: 1 ms to 1 min, for network-bound tasks."""

T = TypeVar("T")

_OWN_LABELS = ("kind", "lane", "key")  # the labels StatsCollector's gauges add themselves

# Metric families already made, per registry, keyed by (kind, namespace, label names):
# several collectors with the same key share them instead of clashing in the registry.
_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[tuple[str, str, tuple[str, ...]], Any]] = (
    weakref.WeakKeyDictionary()
)


def _share(registry: CollectorRegistry, key: tuple[str, str, tuple[str, ...]], make: Callable[[], T]) -> T:
    families = _shared.setdefault(registry, {})
    if key not in families:
        families[key] = make()
    return families[key]  # type: ignore[no-any-return]


class _Families:
    """The counters and histograms of one (registry, namespace, label names)."""

    def __init__(
        self, registry: CollectorRegistry, namespace: str, labelnames: tuple[str, ...], buckets: Sequence[float]
    ) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{namespace}_{name}", doc, labelnames, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"{namespace}_{name}", doc, labelnames, registry=registry, buckets=buckets)

        self.arrived = counter("tasks_arrived", "Submissions accepted by the task manager.")
        self.completed = counter("tasks_completed", "Tasks that succeeded.")
        self.failed = counter("tasks_failed", "Tasks that failed for good (not cancelled ones).")
        self.cancelled = counter("tasks_cancelled", "Tasks cancelled, or dropped or interrupted by kill().")
        self.retried = counter("tasks_retried", "Redeliveries after unhealthy failures.")
        self.transient = counter("transient_retries", "Retries of healthy failures by a RetryPolicy.")
        self.execution = histogram("task_execution_seconds", "Seconds from start to finish of successful tasks.")
        self.wait = histogram("task_wait_seconds", "Seconds from queueing to start, of the tasks that succeeded.")


class PrometheusCollector:
    """A :class:`tasker.MetricsCollector` that also feeds Prometheus counters and histograms.

    Every event goes to Prometheus and then to ``inner``, whose :meth:`metrics` this
    collector returns. Use one per manager.

    Args:
        registry: where the metrics are registered; None means
            ``prometheus_client.REGISTRY``.
        namespace: prefix of every metric name.
        labels: constant labels of this collector's series, e.g.
            ``{"manager": "fetch"}``, to tell several managers apart in one registry.
        inner: the collector behind :meth:`metrics`; None means a new
            :class:`tasker.Collector` on ``clock``.
        clock: time source of the default inner collector (pass the manager's
            ``Config.clock`` if it has one); ignored when ``inner`` is given.
        buckets: histogram bucket bounds in seconds; the first collector of a
            (registry, namespace, label names) sets them.

    Raises:
        ValueError: the registry already has metrics of these names that were not
            made by a ``PrometheusCollector`` with the same label names.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "tasker",
        labels: Mapping[str, str] | None = None,
        inner: MetricsCollector | None = None,
        clock: Clock | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        labels = dict(labels or {})
        labelnames = tuple(sorted(labels))
        families = _share(
            registry,
            ("collector", namespace, labelnames),
            lambda: _Families(registry, namespace, labelnames, buckets),
        )
        self._inner: MetricsCollector = inner if inner is not None else Collector(clock=clock)
        if labels:
            self._arrived = families.arrived.labels(**labels)
            self._completed = families.completed.labels(**labels)
            self._failed = families.failed.labels(**labels)
            self._cancelled = families.cancelled.labels(**labels)
            self._retried = families.retried.labels(**labels)
            self._transient = families.transient.labels(**labels)
            self._execution = families.execution.labels(**labels)
            self._wait = families.wait.labels(**labels)
        else:
            self._arrived = families.arrived
            self._completed = families.completed
            self._failed = families.failed
            self._cancelled = families.cancelled
            self._retried = families.retried
            self._transient = families.transient
            self._execution = families.execution
            self._wait = families.wait

    @property
    def inner(self) -> MetricsCollector:
        """The collector behind :meth:`metrics`."""
        return self._inner

    def record_arrival(self) -> None:
        self._arrived.inc()
        self._inner.record_arrival()

    def record_completion(self, stamps: TaskLifecycleTimestamps) -> None:
        self._completed.inc()
        self._execution.observe(stamps.finished_at - stamps.started_at)
        self._wait.observe(stamps.started_at - stamps.queued_at)
        self._inner.record_completion(stamps)

    def record_failure(self, stamps: TaskLifecycleTimestamps) -> None:
        self._failed.inc()
        self._inner.record_failure(stamps)

    def record_cancellation(self, stamps: TaskLifecycleTimestamps) -> None:
        self._cancelled.inc()
        forward = getattr(self._inner, "record_cancellation", None)
        if forward is not None:
            forward(stamps)

    def record_retry(self) -> None:
        self._retried.inc()
        self._inner.record_retry()

    def record_transient_retry(self) -> None:
        self._transient.inc()
        forward = getattr(self._inner, "record_transient_retry", None)
        if forward is not None:
            forward()

    def metrics(self) -> TaskMetrics:
        return self._inner.metrics()


class StatsCollector:
    """A Prometheus custom collector: the :meth:`~tasker.TaskManager.stats` of managers as gauges.

    ``collect()`` calls ``stats()`` of every tracked manager when Prometheus scrapes.
    Managers are held weakly: one that is garbage-collected disappears from the output.
    Most code calls :func:`register_stats` instead of making one.

    Args:
        namespace: prefix of every metric name.
        labelnames: names of the labels that tell the tracked managers apart.
    """

    def __init__(self, namespace: str = "tasker", labelnames: Sequence[str] = ()) -> None:
        for name in labelnames:
            if not isinstance(name, str) or not name or name.startswith("__"):  # "__": Prometheus's own
                raise ValueError(f"label name {name!r} is not a Prometheus label name")
            if name in _OWN_LABELS:
                raise ValueError(f"label name {name!r} is taken: the stats gauges label by {_OWN_LABELS!r}")
        self._namespace = namespace
        self._labelnames = tuple(labelnames)
        self._managers: weakref.WeakKeyDictionary[TaskManager[Any, Any], tuple[str, ...]] = weakref.WeakKeyDictionary()

    def track(self, manager: TaskManager[Any, Any], labels: Mapping[str, str] | None = None) -> None:
        """Export ``manager``'s stats, with these label values.

        Raises:
            ValueError: the label names are not this collector's ``labelnames``, or another
                tracked manager has these values (Prometheus refuses duplicate series).
        """
        labels = dict(labels or {})
        if sorted(labels) != sorted(self._labelnames):
            raise ValueError(f"labels must have exactly the names {self._labelnames!r}, got {sorted(labels)!r}")
        values = tuple(labels[name] for name in self._labelnames)
        if any(other is not manager and seen == values for other, seen in self._managers.items()):
            raise ValueError(
                f"another tracked manager has the labels {labels!r}: give each manager its own label values"
            )
        self._managers[manager] = values

    def untrack(self, manager: TaskManager[Any, Any]) -> None:
        """Stop exporting ``manager``'s stats; a no-op if it is not tracked."""
        self._managers.pop(manager, None)

    def _families(self) -> dict[str, GaugeMetricFamily]:
        ns, names = self._namespace, self._labelnames
        return {
            "workers": GaugeMetricFamily(f"{ns}_workers", "Live workers, by kind.", labels=(*names, "kind")),
            "active": GaugeMetricFamily(f"{ns}_active_workers", "Live workers, base + burst.", labels=names),
            "busy": GaugeMetricFamily(f"{ns}_busy_workers", "Workers running a task.", labels=names),
            "queued": GaugeMetricFamily(f"{ns}_queued_tasks", "Messages waiting, by lane.", labels=(*names, "lane")),
            "available": GaugeMetricFamily(
                f"{ns}_available_resources", "Free resources in the run_task pool.", labels=names
            ),
            "blocked": GaugeMetricFamily(
                f"{ns}_blocked_submitters", "Submitters waiting for room in a bounded lane.", labels=names
            ),
            "delayed": GaugeMetricFamily(
                f"{ns}_delayed_tasks", "Messages waiting out a retry backoff.", labels=names
            ),
            "key_waiting": GaugeMetricFamily(
                f"{ns}_key_waiting_tasks", "Queued messages waiting for a slot or token of their key.", labels=names
            ),
            "key_in_flight": GaugeMetricFamily(
                f"{ns}_key_in_flight", "In-flight messages of the busiest keys (top 10).", labels=(*names, "key")
            ),
        }

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (lets the registry detect name clashes)."""
        return iter(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """The current stats of every tracked manager."""
        families = self._families()
        for manager, values in list(self._managers.items()):
            stats = manager.stats()
            families["workers"].add_metric([*values, "base"], stats.base_workers)
            families["workers"].add_metric([*values, "burst"], stats.burst_workers)
            families["active"].add_metric(list(values), stats.active_workers)
            families["busy"].add_metric(list(values), stats.busy_workers)
            families["queued"].add_metric([*values, "main"], stats.queued_tasks)
            families["queued"].add_metric([*values, "priority"], stats.priority_tasks)
            families["available"].add_metric(list(values), stats.available_resources)
            families["blocked"].add_metric(list(values), stats.blocked_submitters)
            families["delayed"].add_metric(list(values), stats.delayed_tasks)
            families["key_waiting"].add_metric(list(values), stats.key_waiting_tasks)
            for key, count in stats.key_in_flight:
                families["key_in_flight"].add_metric([*values, str(key)], count)
        return iter(families.values())


def register_stats(
    manager: TaskManager[Any, Any],
    *,
    registry: CollectorRegistry | None = None,
    namespace: str = "tasker",
    labels: Mapping[str, str] | None = None,
) -> StatsCollector:
    """Export ``manager``'s stats as gauges, read at scrape time.

    Managers registered on one registry with the same namespace and label names share
    one :class:`StatsCollector`; it is returned, e.g. to ``untrack`` the manager.

    Args:
        manager: the manager to export.
        registry: None means ``prometheus_client.REGISTRY``.
        namespace: prefix of every metric name.
        labels: label values that tell this manager apart from the others.

    Raises:
        ValueError: the registry already has metrics of these names from elsewhere.
    """
    registry = REGISTRY if registry is None else registry
    labelnames = tuple(sorted(labels or {}))

    def make() -> StatsCollector:
        collector = StatsCollector(namespace, labelnames)
        registry.register(collector)
        return collector

    collector = _share(registry, ("stats", namespace, labelnames), make)
    collector.track(manager, labels)
    return collector
