"""Token buckets: burst, refill, exact waits and the long-run rate, on virtual time."""

from __future__ import annotations

import pytest

from tasker import RateLimit
from tasker._ratelimit import TokenBucket
from tasker.testing import FakeClock


class TestRateLimit:
    """RateLimit refuses rates and bursts that make no sense."""

    @pytest.mark.parametrize("rate", [0, -1.0, float("inf"), float("nan")])
    def test_bad_rate(self, rate: float) -> None:
        with pytest.raises(ValueError):
            RateLimit(rate)

    @pytest.mark.parametrize(("rate", "burst"), [("1", 1), (True, 1), (1.0, 1.5), (1.0, True)])
    def test_bad_types(self, rate: object, burst: object) -> None:
        with pytest.raises(TypeError):
            RateLimit(rate, burst)  # type: ignore[arg-type]

    def test_burst_below_one(self) -> None:
        with pytest.raises(ValueError):
            RateLimit(1.0, 0)


class TestTokenBucket:
    """A bucket gives its burst at once, then one token per 1/rate seconds."""

    def test_starts_full_then_refills_at_the_rate(self) -> None:
        bucket = TokenBucket(RateLimit(4.0, burst=3), now=10.0)
        assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
        assert bucket.wait(10.0) == pytest.approx(0.25)
        assert not bucket.take(10.2)
        assert bucket.take(10.25)
        assert bucket.wait(10.25) == pytest.approx(0.25)

    def test_never_holds_more_than_its_burst(self) -> None:
        bucket = TokenBucket(RateLimit(100.0, burst=2), now=0.0)
        assert bucket.take(0.0) and bucket.take(0.0)
        assert bucket.full_in(0.0) == pytest.approx(0.02)
        assert bucket.full_in(1000.0) == 0.0
        assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]

    @pytest.mark.parametrize(("rate", "burst"), [(7.3, 1), (1000.0, 50), (0.37, 4)])
    def test_long_run_rate_within_one_percent(self, rate: float, burst: int) -> None:
        """A greedy taker that sleeps exactly ``wait()`` between takes gets the set rate."""
        clock = FakeClock()
        bucket = TokenBucket(RateLimit(rate, burst), clock.now())
        taken = 0
        horizon = 20_000 / rate  # 20,000 tokens' worth of time
        while clock.now() < horizon:
            if bucket.take(clock.now()):
                taken += 1
            else:
                clock.advance(bucket.wait(clock.now()))
        measured = (taken - burst) / clock.now()
        assert abs(measured - rate) / rate < 0.01
