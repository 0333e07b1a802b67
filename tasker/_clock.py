"""The clock seam: every timing decision in tasker reads one injectable clock.

The manager, its scaler and supervisor, and the default collector read time and sleep
only through a :class:`Clock`. :class:`MonotonicClock` is the real one;
``tasker.testing.FakeClock`` is virtual time for deterministic tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent

__all__ = ["Clock", "MonotonicClock", "TimerHandle"]


class TimerHandle(Protocol):
    """What :meth:`Clock.call_later` returns."""

    def cancel(self) -> None:
        """Stop the timer; a no-op once it has fired."""


class Clock(Protocol):
    """Time as tasker sees it (seconds, monotonic)."""

    def now(self) -> float:
        """The current time in seconds; only differences are meaningful."""

    def sleep(self, seconds: float) -> None:
        """Block the calling greenlet for ``seconds`` of this clock's time."""

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``fn(*args)`` from the hub once ``seconds`` have passed; it must not block."""


class _LoopTimer:
    __slots__ = ("_timer",)

    def __init__(self, seconds: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._timer = gevent.get_hub().loop.timer(seconds)
        self._timer.start(fn, *args)

    def cancel(self) -> None:
        self._timer.close()


class MonotonicClock:
    """Real time: ``time.monotonic``, ``gevent.sleep`` and the event loop's timers."""

    __slots__ = ()

    now = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def call_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> TimerHandle:
        return _LoopTimer(seconds, fn, args)
