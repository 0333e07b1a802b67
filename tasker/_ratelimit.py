"""Token buckets: a request rate with a burst, on the manager's clock.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; a dispatch
takes one. It is refilled lazily, from the time elapsed since it was last looked at, so
it costs nothing while nobody asks and needs no greenlet: when a message must wait for a
token, the mailbox asks :meth:`TokenBucket.wait` how long and arms one timer on the
clock (no busy waiting). With :class:`~tasker.testing.FakeClock` every wait is exact.

Over any window of ``T`` seconds a bucket gives out at most ``burst + rate * T``
tokens, and exactly ``rate`` a second in the long run while demand lasts.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["RateLimit", "TokenBucket"]

_EPS = 1e-9  # tokens: float error below this is rounding, not a missing token


def _positive_rate(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"RateLimit.{attr.name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"RateLimit.{attr.name} must be a finite number > 0, got {value!r}")


def _burst(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"RateLimit.burst must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"RateLimit.burst must be >= 1, got {value!r}")


@attrs.frozen
class RateLimit:
    """A token-bucket rate: ``rate`` dispatches a second, up to ``burst`` at once.

    Raises:
        TypeError, ValueError: ``rate`` is not a finite number > 0, or ``burst`` not an
            int >= 1.
    """

    rate: float = attrs.field(validator=_positive_rate)
    """Tokens gained per second."""
    burst: int = attrs.field(default=1, validator=_burst)
    """Most tokens held at once: how many dispatches may go back to back after a pause."""


class TokenBucket:
    """The mutable state of one :class:`RateLimit`; starts full at time ``now``."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._rate = float(limit.rate)
        self._burst = float(limit.burst)
        self._tokens = self._burst
        self._last = now

    def _refill(self, now: float) -> float:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
        return self._tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one at ``now``."""
        if self._refill(now) >= 1.0 - _EPS:
            self._tokens -= 1.0
            return True
        return False

    def tokens(self, now: float) -> int:
        """Whole tokens there at ``now``: how many dispatches could go at once."""
        return int(self._refill(now) + _EPS)

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0.0 if one is)."""
        missing = 1.0 - self._refill(now)
        return missing / self._rate if missing > _EPS else 0.0

    def full_in(self, now: float) -> float:
        """Seconds from ``now`` until the bucket is full again (0.0 if it is)."""
        missing = self._burst - self._refill(now)
        return missing / self._rate if missing > _EPS else 0.0
