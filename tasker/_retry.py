"""The transient retry policy: which healthy failures to try again, how often, how late.

A transient failure (an HTTP 429 or 503, a read timeout) says nothing bad about the
worker's resource: ``check_health`` calls it healthy, so the supervisor's unhealthy path
(retire the worker, redeliver at once) does not apply. :class:`RetryPolicy` retries it
*later*, on any worker, after a capped exponential backoff with full jitter::

    delay(n) = random() * min(max_delay, base_delay * 2 ** n)     # n = retries so far

(the "full jitter" of the AWS architecture blog: spreads retries of a burst of failures
evenly instead of in waves). An exception that carries a delay hint, an attribute
``retry_after`` in seconds (a server's ``Retry-After``), is retried after exactly that
delay instead; a hint longer than ``max_retry_after`` is not waited for: the caller gets
the error at once. The random source is injectable, so tests are exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["RetryPolicy", "retry_after"]


def _classes_or_predicate(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, tuple):
        if not value or not all(isinstance(c, type) and issubclass(c, BaseException) for c in value):
            raise TypeError(f"RetryPolicy.retry_on must be exception classes or a predicate, got {value!r}")
    elif not callable(value):
        raise TypeError(f"RetryPolicy.retry_on must be exception classes or a predicate, got {value!r}")


def _to_classes(value: Any) -> Any:
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _int(minimum: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"RetryPolicy.{attr.name} must be an int, got {value!r}")
        if value < minimum:
            raise ValueError(f"RetryPolicy.{attr.name} must be >= {minimum}, got {value!r}")

    return check


def _seconds(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"RetryPolicy.{attr.name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"RetryPolicy.{attr.name} must be a finite number of seconds >= 0, got {value!r}")


def retry_after(exc: BaseException) -> float | None:
    """The delay hint an exception carries: its ``retry_after`` attribute in seconds, if any.

    A hint that is not a finite number >= 0 is ignored (None).
    """
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, bool) or not isinstance(hint, (int, float)):
        return None
    return float(hint) if math.isfinite(hint) and hint >= 0 else None


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Retries of healthy (transient) failures, later, with backoff; see the module doc.

    Set it as ``Config(retry=...)`` for every submission, or ``submit(..., retry=...)``
    for one (``RetryPolicy(attempts=0)`` turns retries off for it). At-most-once
    submissions (``once=True``) are never retried.

    Raises:
        TypeError, ValueError: a field is out of range.
    """

    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = attrs.field(
        converter=_to_classes, validator=_classes_or_predicate
    )
    """Exception classes to retry, or a predicate ``retry_on(exc) -> bool``."""
    attempts: int = attrs.field(default=3, validator=_int(0))
    """Retries after the first run (0: never retry). When they are used up the caller
    gets ``RetriesExhaustedError`` with the last error as its cause."""
    base_delay: float = attrs.field(default=0.5, validator=_seconds)
    """Seconds: the backoff cap of the first retry (doubled for each retry after it)."""
    max_delay: float = attrs.field(default=30.0, validator=_seconds)
    """Seconds: the cap of the exponential backoff."""
    jitter: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    """Full jitter: wait a uniform random fraction of the capped backoff. False waits the
    whole capped backoff (deterministic)."""
    max_retry_after: float = attrs.field(default=300.0, validator=_seconds)
    """Seconds: the longest ``retry_after`` hint honoured; a longer one is not waited for
    (the caller gets the error)."""
    random: Callable[[], float] = attrs.field(
        default=random.random, eq=False, repr=False, validator=attrs.validators.is_callable()
    )
    """The random source of the jitter, a float in [0, 1): inject one for exact tests."""

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a transient failure this policy retries."""
        retry_on = self.retry_on
        if isinstance(retry_on, tuple):
            return isinstance(exc, retry_on)
        return bool(retry_on(exc))

    def delay(self, exc: BaseException, retries: int) -> float | None:
        """Seconds to wait before retry number ``retries + 1``; None: do not retry.

        The exception's ``retry_after`` hint wins over the backoff; a hint over
        ``max_retry_after`` means no retry.
        """
        hint = retry_after(exc)
        if hint is not None:
            return hint if hint <= self.max_retry_after else None
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(retries, 60))
        if not self.jitter:
            return cap
        fraction = self.random()
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"RetryPolicy.random must return a number in [0, 1], got {fraction!r}")
        return cap * fraction
