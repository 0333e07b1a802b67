"""Test helpers for code that uses tasker: a virtual clock.

:class:`FakeClock` is a :class:`tasker.Clock` whose time moves only when the test says
so. Pass it as ``Config(clock=...)`` (and ``Collector(clock=...)``) and the scaler,
the restart backoff, task timeouts, ``stop(timeout=...)`` and the metric rates all run
on virtual time: a test advances the clock and asserts exact outcomes, with no real
sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

__all__ = ["FakeClock"]


class _Timer:
    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _check_seconds(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} takes a number of seconds, got {value!r}")
    if not math.isfinite(value):  # NaN would freeze the clock: no timer would ever be due
        raise ValueError(f"{what} takes a finite number of seconds, got {value!r}")


class FakeClock:
    """Virtual monotonic time, starting at ``start`` seconds.

    ``sleep`` parks the greenlet until :meth:`advance` moves time past its deadline;
    ``call_later`` callbacks run inside :meth:`advance`, in time order.
    """

    def __init__(self, start: float = 0.0) -> None:
        _check_seconds("FakeClock start", start)
        self._now = start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        timer = _Timer(fn, args)
        heapq.heappush(self._timers, (self._now + max(0.0, seconds), next(self._seq), timer))
        return timer

    def sleep(self, seconds: float) -> None:
        woken = Event()
        timer = self.call_later(seconds, woken.set)
        try:
            woken.wait()
        finally:
            timer.cancel()

    @property
    def sleepers(self) -> int:
        """How many timers (sleeps included) are pending."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in order.

        After each due timer fires, every greenlet it woke runs until it blocks again
        (``gevent.idle``), so the test sees the effects before the next step.
        """
        _check_seconds("FakeClock.advance", seconds)
        if seconds < 0:
            raise ValueError(f"cannot go back in time ({seconds!r} s)")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.fn(*timer.args)
            gevent.idle()
        self._now = target
        gevent.idle()
