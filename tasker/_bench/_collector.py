"""B6: the default Collector's cost per record and per ``metrics()``, and its memory growth.

The record cost is amortized: ``record_completion`` buffers, and every ``FOLD_EVERY``-th
call folds the buffer in. Sizes are compared after ``metrics()``, which folds what is
buffered, so that they show the collector's state, not where a batch happens to end.
"""

from __future__ import annotations

import gc
import sys
import time

import attrs

from .._metrics import Collector
from .._types import TaskLifecycleTimestamps
from ._memory import peak_rss, reset_peak_rss

__all__ = ["CollectorResult", "collector_costs", "deep_size", "record_loop", "warm_collector"]


@attrs.frozen
class CollectorResult:
    """B6: the default collector's cost per record and per read, and its memory growth."""

    records: int
    record_us: float  # microseconds per record_completion
    metrics_ms: float  # milliseconds per metrics()
    size_before: int  # bytes reachable from the collector after the warm-up records
    size_after: int  # ... after ``records`` more
    peak_rss: int

    @property
    def growth(self) -> int:
        return self.size_after - self.size_before


def deep_size(obj: object) -> int:
    """Bytes of ``obj`` and every object it reaches, except types, modules and functions."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    skip = (type, type(sys), type(deep_size), type(len))
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skip):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
    return total


def _stamps(count: int = 256) -> list[TaskLifecycleTimestamps]:
    """``count`` execution times spread log-uniformly from 1 µs to 1 s, in many buckets."""
    return [TaskLifecycleTimestamps(0.0, 0.001, 0.001 + 10 ** (-6 + 6 * i / count)) for i in range(count)]


def warm_collector(collector: Collector) -> None:
    """Record every sample 300 times, then read ``metrics()`` (which folds them all in).

    That takes every bucket count past CPython's cache of small ints (objects shared
    by the whole process), so that a size measured next grows only if the collector's
    memory grows with the number of samples.
    """
    record = collector.record_completion
    for stamp in _stamps() * 300:
        record(stamp)
    collector.metrics()


def collector_costs(records: int, reads: int = 200) -> CollectorResult:
    """B6: ``records`` calls of ``record_completion``, then ``reads`` calls of ``metrics()``."""
    reset_peak_rss()
    collector = Collector()
    stamps = _stamps()
    record = collector.record_completion
    warm_collector(collector)
    collector.metrics()  # fold the buffered records in: sizes compare the folded state
    before = deep_size(collector)
    mask = len(stamps) - 1
    start = time.perf_counter()
    for i in range(records):
        record(stamps[i & mask])
    record_s = (time.perf_counter() - start) / records
    collector.metrics()
    after = deep_size(collector)
    start = time.perf_counter()
    for _ in range(reads):
        collector.metrics()
    metrics_s = (time.perf_counter() - start) / reads
    return CollectorResult(records, record_s * 1e6, metrics_s * 1e3, before, after, peak_rss())


def record_loop(collector: Collector, records: int) -> None:
    """The timed part of B6's record cost, for pytest-benchmark."""
    stamps = _stamps()
    mask = len(stamps) - 1
    record = collector.record_completion
    for i in range(records):
        record(stamps[i & mask])
