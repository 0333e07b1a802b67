"""``tasker.testing.FakeClock``: virtual time that moves only when the test advances it."""

from __future__ import annotations

import gevent
import pytest

import tasker
from tasker.testing import FakeClock


class TestNow:
    """``now`` starts where asked and moves by exactly what ``advance`` says."""

    def test_starts_at_zero(self) -> None:
        assert FakeClock().now() == 0.0

    def test_starts_at_start(self) -> None:
        assert FakeClock(start=123.5).now() == 123.5

    def test_advance_moves_now(self) -> None:
        clock = FakeClock(start=10.0)
        clock.advance(2.5)
        assert clock.now() == 12.5
        clock.advance(0)
        assert clock.now() == 12.5
        clock.advance(0.5)
        assert clock.now() == 13.0

    def test_real_time_does_not_move_it(self) -> None:
        clock = FakeClock()
        gevent.sleep(0.01)
        assert clock.now() == 0.0

    @pytest.mark.parametrize("seconds", [-1e-9, -1.0])
    def test_negative_advance(self, seconds: float) -> None:
        clock = FakeClock(start=5.0)
        with pytest.raises(ValueError):
            clock.advance(seconds)
        assert clock.now() == 5.0

    @pytest.mark.parametrize(
        ("bad", "error"),
        [(float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError), (True, TypeError)],
        ids=["nan", "inf", "str", "bool"],
    )
    def test_bad_seconds(self, bad: object, error: type[Exception]) -> None:
        """Regression: advance(nan) froze the clock at nan; no timer was ever due again."""
        clock = FakeClock(start=5.0)
        with pytest.raises(error, match=r"FakeClock\.advance"):
            clock.advance(bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="FakeClock start"):
            FakeClock(start=bad)  # type: ignore[arg-type]
        assert clock.now() == 5.0

    def test_is_accepted_as_a_config_clock(self) -> None:
        clock = FakeClock()
        assert tasker.Config(on_create=object, worker_count=1, clock=clock).clock is clock


class TestSleep:
    """``sleep`` parks the greenlet until the clock is advanced to its deadline."""

    def test_parks_until_deadline(self) -> None:
        clock = FakeClock()
        sleeper = gevent.spawn(clock.sleep, 1.0)
        gevent.idle()
        assert not sleeper.ready()
        assert clock.sleepers == 1
        clock.advance(0.6)
        assert not sleeper.ready()
        clock.advance(0.4)  # exactly at the deadline
        assert sleeper.ready()
        assert sleeper.successful()
        assert clock.sleepers == 0

    def test_woken_greenlet_runs_before_advance_returns(self) -> None:
        clock = FakeClock()
        seen: list[float] = []

        def nap() -> None:
            clock.sleep(2.0)
            seen.append(clock.now())

        gevent.spawn(nap)
        gevent.idle()
        clock.advance(5.0)
        assert seen == [2.0]

    def test_repeated_sleeps_within_one_advance(self) -> None:
        clock = FakeClock()
        ticks: list[float] = []

        def ticker() -> None:
            while True:
                clock.sleep(1.0)
                ticks.append(clock.now())

        greenlet = gevent.spawn(ticker)
        gevent.idle()
        clock.advance(5.5)
        assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert clock.now() == 5.5
        greenlet.kill()

    def test_sleepers_wake_in_deadline_order(self) -> None:
        clock = FakeClock()
        woke: list[str] = []

        def nap(name: str, seconds: float) -> None:
            clock.sleep(seconds)
            woke.append(name)

        for name, seconds in [("c", 3.0), ("a", 1.0), ("b", 2.0)]:
            gevent.spawn(nap, name, seconds)
        gevent.idle()
        assert clock.sleepers == 3
        clock.advance(10.0)
        assert woke == ["a", "b", "c"]

    def test_killed_sleeper_leaves_no_timer(self) -> None:
        clock = FakeClock()
        sleeper = gevent.spawn(clock.sleep, 1.0)
        gevent.idle()
        assert clock.sleepers == 1
        sleeper.kill()
        assert clock.sleepers == 0
        clock.advance(2.0)  # firing nothing is fine


class TestCallLater:
    """``call_later`` callbacks fire inside ``advance``, in time order, at their own time."""

    def test_fires_in_time_order_with_now_at_the_deadline(self) -> None:
        clock = FakeClock()
        fired: list[tuple[str, float]] = []
        for name, seconds in [("3", 3.0), ("1", 1.0), ("2", 2.0)]:
            clock.call_later(seconds, lambda n=name: fired.append((n, clock.now())))
        clock.advance(2.5)
        assert fired == [("1", 1.0), ("2", 2.0)]
        assert clock.now() == 2.5
        clock.advance(0.5)
        assert fired == [("1", 1.0), ("2", 2.0), ("3", 3.0)]

    def test_same_deadline_keeps_insertion_order(self) -> None:
        clock = FakeClock()
        fired: list[int] = []
        for i in range(5):
            clock.call_later(1.0, fired.append, i)
        clock.advance(1.0)
        assert fired == [0, 1, 2, 3, 4]

    def test_passes_args(self) -> None:
        clock = FakeClock()
        got: list[tuple[int, str]] = []
        clock.call_later(0.1, lambda a, b: got.append((a, b)), 7, "x")
        clock.advance(0.1)
        assert got == [(7, "x")]

    def test_relative_to_now(self) -> None:
        clock = FakeClock(start=100.0)
        fired: list[float] = []
        clock.call_later(1.0, lambda: fired.append(clock.now()))
        clock.advance(0.99)
        assert fired == []
        clock.advance(0.01)
        assert fired == [101.0]

    def test_zero_and_negative_delays_fire_on_next_advance_in_call_order(self) -> None:
        clock = FakeClock(start=1.0)
        fired: list[tuple[str, float]] = []
        clock.call_later(0.0, lambda: fired.append(("zero", clock.now())))
        clock.call_later(-5.0, lambda: fired.append(("negative", clock.now())))  # means "now"
        assert fired == []
        clock.advance(0)
        assert fired == [("zero", 1.0), ("negative", 1.0)]
        assert clock.now() == 1.0

    def test_cancel(self) -> None:
        clock = FakeClock()
        fired: list[str] = []
        keep = clock.call_later(1.0, fired.append, "keep")
        drop = clock.call_later(1.0, fired.append, "drop")
        drop.cancel()
        assert clock.sleepers == 1
        clock.advance(2.0)
        assert fired == ["keep"]
        keep.cancel()  # a no-op once fired
        assert fired == ["keep"]

    def test_callback_scheduling_within_the_advance_fires_too(self) -> None:
        clock = FakeClock()
        fired: list[float] = []

        def again() -> None:
            fired.append(clock.now())
            if len(fired) < 10:
                clock.call_later(1.0, again)

        clock.call_later(1.0, again)
        clock.advance(3.5)
        assert fired == [1.0, 2.0, 3.0]
        clock.advance(100.0)
        assert fired == [float(i) for i in range(1, 11)]

    def test_does_not_fire_without_advance(self) -> None:
        clock = FakeClock()
        fired: list[int] = []
        clock.call_later(0.0, fired.append, 1)
        gevent.sleep(0.01)
        assert fired == []
