"""The default metrics collector: O(1) per record, bounded memory, ~1% percentiles.

Execution times go into a log-bucketed histogram (the DDSketch idea): bucket ``i``
holds values in ``(m * g**(i-1), m * g**i]`` with ``g = (1 + a) / (1 - a)``, so any
percentile it reports is within a relative error ``a`` (1% by default) of a true sample
value, whatever the number of samples; min, max and means are exact. Rates count events
in a ring of time slots covering the last ``window`` seconds. Memory is a fixed list of
~1,800 bucket counters and a few slots, however many tasks run.

``record_arrival`` only appends its time to a list (``pending_arrivals``), and
``record_completion`` the task's wait, run and finish times to three
(``pending_completions``); the lists are folded into the histogram, the sums and the
rate windows every ``FOLD_EVERY`` records and whenever ``metrics()`` reads them, one
batch at a time. Folding in order, with each record's own times, gives exactly what
folding each record at once would: ``metrics()`` never sees a record late, and the
buffers bound memory. A manager on this collector's clock appends to the lists itself
(``TaskManager.submit``, ``Worker._loop``), which saves a call per record; it then
calls :meth:`Collector.fold` when a list is full. A manager
on this collector (any clock) likewise adds its failures and cancellations straight to
its counters (``_failed``, ``_cancelled``: private, so a subclass's own names are free).

It never blocks and never yields, so within one gevent process it needs no lock; it is
not meant to be shared between OS threads.
"""

from __future__ import annotations

import math
from bisect import bisect_left as _bisect_left
from bisect import bisect_right as _bisect_right
from collections import deque

from ._clock import Clock, MonotonicClock
from ._types import TaskLifecycleTimestamps, TaskMetrics

__all__ = ["FOLD_EVERY", "Collector"]

FOLD_EVERY = 1000  # arrivals, or completions, buffered before they are folded in
_MIN_VALUE = 1e-9  # 1 ns: anything shorter lands in bucket 0, which reads as the minimum seen
_MAX_VALUE = 1e6  # seconds; longer values land in the last bucket


class _RateWindow:
    """Events per second over the last ``window`` seconds.

    Counting is one comparison and one increment: the running total is snapshotted
    only when time crosses a slot boundary, into a ring of ``slots`` snapshots.
    """

    __slots__ = ("_marks", "_slots", "_width", "_window", "count", "next_roll")

    def __init__(self, window: float, slots: int, start: float) -> None:
        self._width = window / slots
        self._window = window
        self._slots = slots
        self.count = 0
        self.next_roll = start + self._width
        self._marks: deque[tuple[float, int]] = deque([(start, 0)], maxlen=slots + 1)

    def roll(self, now: float) -> None:
        """Snapshot the total at each slot boundary passed since the last roll."""
        width = self._width
        if now - self.next_roll >= self._window:
            # Silent for a whole window: nothing happened since (now - window).
            self.next_roll += (int((now - self.next_roll) // width) + 1) * width
            last = self.next_roll - width
            marks = self._marks
            marks.clear()
            marks.extend((last - k * width, self.count) for k in range(self._slots, -1, -1))
            return
        while now >= self.next_roll:
            self._marks.append((self.next_roll, self.count))
            self.next_roll += width

    def rate(self, now: float) -> float:
        self.roll(now)
        since, count_then = self._marks[0]
        span = now - since
        return (self.count - count_then) / span if span > 0 else 0.0


def _count(window: _RateWindow, times: list[float]) -> None:
    """Count events at ``times`` (in the order they happened) in ``window``."""
    if max(times) < window.next_roll:  # no slot boundary among them: the usual case
        window.count += len(times)
        return
    for now in times:
        if now >= window.next_roll:
            window.roll(now)
        window.count += 1


class Collector:
    """The default :class:`~tasker.MetricsCollector`.

    Args:
        clock: time source for rates; defaults to the real monotonic clock.
        window: seconds of history behind ``task_arrival_rate`` and
            ``task_completion_rate``.
        relative_error: bound on the relative error of p95/p99, in (0, 0.5).

    With the seed's meanings: execution and wait times, and ``task_completion_rate``,
    come from successful tasks only (``record_completion``); ``record_failure`` and
    ``record_cancellation`` only count. Wait time is from queueing to the start of the
    last attempt.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        window: float = 10.0,
        relative_error: float = 0.01,
    ) -> None:
        for name, value in (("relative_error", relative_error), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Collector {name} must be a number, got {value!r}")
        if not 0 < relative_error < 0.5:
            raise ValueError(f"Collector relative_error must be in (0, 0.5), got {relative_error!r}")
        if not 0 < window < float("inf"):
            raise ValueError(f"Collector window must be a finite number of seconds > 0, got {window!r}")
        self._clock = clock or MonotonicClock()
        gamma = (1 + relative_error) / (1 - relative_error)
        self._gamma = gamma
        self._buckets = [0] * (int(math.log(_MAX_VALUE / _MIN_VALUE) / math.log(gamma)) + 3)
        self._last = len(self._buckets) - 1
        # Bucket i holds the values in (bounds[i-1], bounds[i]]; the last one, all above.
        # Bucket 1 is the one that ends at 1 ns: bucket 0 holds only what is under it.
        self._bounds = [_MIN_VALUE * gamma ** (i - 1) for i in range(self._last)]
        self._ran = 0
        self._exec_sum = 0.0
        self._exec_min = math.inf
        self._exec_max = 0.0
        self._wait_sum = 0.0
        # Counted only; a manager on this collector adds to them directly (``Core.finish``).
        self._failed = 0
        self._cancelled = 0
        self._retried = 0
        self._transient = 0
        # Not folded in yet: arrival times; and each completion's wait (started - queued),
        # run (finished - started) and finish time, at the same index of three lists, so
        # the fold subtracts nothing. The manager appends to them directly when it shares
        # this collector's clock.
        self.pending_arrivals: list[float] = []
        self.pending_completions: tuple[list[float], list[float], list[float]] = ([], [], [])
        now = self._clock.now()
        self._arrivals = _RateWindow(window, 20, now)
        self._finishes = _RateWindow(window, 20, now)

    @property
    def clock_now(self) -> object:
        """The time source this collector reads (to tell whether it shares a manager's)."""
        return self._clock.now

    def record_arrival(self) -> None:
        self.arrived_at(self._clock.now())

    def arrived_at(self, now: float) -> None:
        """``record_arrival`` with the time already read (the manager's, when it shares this clock)."""
        arrivals = self.pending_arrivals
        arrivals.append(now)
        if len(arrivals) >= FOLD_EVERY:
            self.fold()

    def record_retry(self) -> None:
        self._retried += 1

    def record_transient_retry(self) -> None:
        self._transient += 1

    def record_failure(self, stamps: TaskLifecycleTimestamps) -> None:
        self._failed += 1

    def record_cancellation(self, stamps: TaskLifecycleTimestamps) -> None:
        self._cancelled += 1

    def record_completion(self, stamps: TaskLifecycleTimestamps) -> None:
        queued, started, finished = stamps
        waits, runs, finishes = self.pending_completions
        waits.append(started - queued)
        runs.append(finished - started)
        finishes.append(finished)
        if len(finishes) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Fold the buffered arrivals and completions in (both buffers end empty).

        Each record is counted in its rate window by its own time, exactly as if it had
        been folded in when it was recorded; the histogram, sums, min and max get the
        same values, in the same order, as one record at a time would give them.
        """
        arrivals = self.pending_arrivals
        if arrivals:
            _count(self._arrivals, arrivals)
            arrivals.clear()
        waits, took, finishes = self.pending_completions
        if not finishes:
            return
        # sum() adds floats without making an object per addition (Python 3.12 also
        # compensates the rounding: the batch is then more exact than one at a time).
        self._wait_sum = sum(waits, self._wait_sum)
        waits.clear()
        self._exec_sum = sum(took, self._exec_sum)
        took.sort()  # then each bucket's share is one bisection, not a log per value
        if took[0] < self._exec_min:
            self._exec_min = took[0]
        if took[-1] > self._exec_max:
            self._exec_max = took[-1]
        buckets, bounds, last = self._buckets, self._bounds, self._last
        n = len(took)
        i = _bisect_left(bounds, took[0])
        start = 0
        while i < last:
            end = _bisect_right(took, bounds[i], start)  # the values <= bounds[i]: bucket i
            buckets[i] += end - start
            if end == n:
                break
            start = end
            i = _bisect_left(bounds, took[start], i + 1)
        else:
            buckets[last] += n - start
        self._ran += n
        took.clear()
        _count(self._finishes, finishes)
        finishes.clear()

    def _percentile(self, q: float) -> float:
        rank = max(1, math.ceil(q * self._ran))
        seen = 0
        for i, count in enumerate(self._buckets):
            seen += count
            if seen >= rank:
                if i == 0 or i == self._last:  # under 1 ns, or over the top: the min or the max seen
                    value = 0.0 if i == 0 else self._exec_max
                else:  # within the relative error of every value in (bounds[i-1], bounds[i]]
                    value = 2 * self._bounds[i] / (1 + self._gamma)
                return min(max(value, self._exec_min), self._exec_max)
        return self._exec_max  # pragma: no cover - rank <= total by construction

    def metrics(self) -> TaskMetrics:
        self.fold()
        now = self._clock.now()
        completed = ran = self._ran
        terminal = completed + self._failed
        return TaskMetrics(
            average_execution_time=self._exec_sum / ran if ran else 0.0,
            min_execution_time=self._exec_min if ran else 0.0,
            max_execution_time=self._exec_max,
            p95_execution_time=self._percentile(0.95) if ran else 0.0,
            p99_execution_time=self._percentile(0.99) if ran else 0.0,
            average_wait_time=self._wait_sum / ran if ran else 0.0,
            task_arrival_rate=self._arrivals.rate(now),
            task_completion_rate=self._finishes.rate(now),
            total_tasks_completed=completed,
            total_tasks_failed=self._failed,
            total_tasks_retried=self._retried,
            success_rate=completed / terminal if terminal else 0.0,
            failure_rate=self._failed / terminal if terminal else 0.0,
            total_tasks_cancelled=self._cancelled,
            total_transient_retries=self._transient,
        )
