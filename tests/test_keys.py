"""The key table alone: slots, backlogs in place, priority, rate tokens, forgetting idle keys."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from tasker import KeyLimits, RateLimit
from tasker._keys import KeyTable
from tasker.testing import FakeClock


class Msg:
    """The two fields of a message the key table reads."""

    def __init__(self, key: Hashable, priority: bool = False, name: str = "") -> None:
        self._key = key
        self._priority = priority
        self.name = name

    def __repr__(self) -> str:
        return f"Msg({self.name or self._key!r})"


class Harness:
    """A key table whose admitted messages go to ``lane`` (as the mailbox's lanes would)."""

    def __init__(self, limit: int | None = 2, rate: RateLimit | None = None, **overrides: KeyLimits) -> None:
        self.clock = FakeClock()
        self.lane: list[Any] = []
        limits: dict[Hashable, KeyLimits] = {name: value for name, value in overrides.items()}
        self.table = KeyTable(limit, rate, limits, self.clock, self.lane.append)

    def submit(self, msg: Msg) -> bool:
        if self.table.arrive(msg):
            self.lane.append(msg)
            return True
        return False

    def dispatch(self) -> Msg:
        """A worker takes the head of the lane."""
        msg = self.lane.pop(0)
        self.table.dispatched(msg)
        return msg  # type: ignore[no-any-return]


class TestConcurrency:
    """At most ``limit`` messages of a key hold a slot; the others wait in place."""

    def test_over_the_limit_waits_and_a_release_admits_the_next(self) -> None:
        h = Harness(limit=2)
        a = [Msg("a", name=f"a{i}") for i in range(4)]
        assert [h.submit(m) for m in a] == [True, True, False, False]
        first = h.dispatch()
        h.dispatch()
        assert h.lane == []
        h.table.release(first)
        assert h.lane == [a[2]]

    def test_no_head_of_line_blocking(self) -> None:
        """A full key's backlog never holds back a message of another key."""
        h = Harness(limit=1)
        blocked = [Msg("slow") for _ in range(3)]
        for m in blocked:
            h.submit(m)
        other = Msg("fast")
        assert h.submit(other)
        assert h.lane == [blocked[0], other]

    def test_priority_first_within_a_key(self) -> None:
        h = Harness(limit=1)
        running, late_main, urgent = Msg("k"), Msg("k", name="main"), Msg("k", priority=True, name="prio")
        for m in (running, late_main, urgent):
            h.submit(m)
        h.table.release(h.dispatch())
        assert h.lane == [urgent]

    def test_front_goes_ahead_of_the_backlog(self) -> None:
        h = Harness(limit=1)
        running, waiting, retried = Msg("k"), Msg("k", name="waiting"), Msg("k", name="retried")
        h.submit(running)
        h.submit(waiting)
        assert not h.table.arrive(retried, front=True)
        h.table.release(h.dispatch())
        assert h.lane == [retried]

    def test_per_key_override(self) -> None:
        h = Harness(limit=1, big=KeyLimits(concurrency=3))
        assert [h.submit(Msg("big")) for _ in range(4)] == [True, True, True, False]
        assert [h.submit(Msg("small")) for _ in range(2)] == [True, False]

    def test_unlimited_keys_are_only_counted(self) -> None:
        h = Harness(limit=None)
        assert all(h.submit(Msg("k")) for _ in range(100))
        for _ in range(60):
            h.dispatch()
        assert h.table.in_flight(5) == (("k", 60),)


class TestWithdraw:
    """A waiting message is withdrawn in O(1); a withdrawn slot goes to the next one."""

    def test_withdraw_from_the_backlog(self) -> None:
        h = Harness(limit=1)
        running, gone, kept = Msg("k"), Msg("k", name="gone"), Msg("k", name="kept")
        for m in (running, gone, kept):
            h.submit(m)
        assert h.table.withdraw(gone)
        assert not h.table.withdraw(gone)
        assert not h.table.withdraw(running)  # it holds a slot: not in the backlog
        h.table.release(h.dispatch())
        assert h.lane == [kept]

    def test_unqueue_gives_the_slot_on(self) -> None:
        h = Harness(limit=1)
        first, second = Msg("k"), Msg("k")
        h.submit(first)
        h.submit(second)
        h.lane.remove(first)
        h.table.unqueue(first)
        assert h.lane == [second]

    def test_drain_returns_priority_then_main_and_forgets_everything(self) -> None:
        h = Harness(limit=1)
        msgs = [Msg("a"), Msg("a", name="a-main"), Msg("b"), Msg("b", priority=True, name="b-prio")]
        for m in msgs:
            h.submit(m)
        assert h.table.drain() == ([msgs[3]], [msgs[1]])
        assert len(h.table) == 0


class TestMemory:
    """Keys with nothing held or waiting have no record."""

    def test_one_hundred_thousand_keys_leave_nothing_behind(self) -> None:
        h = Harness(limit=1)
        for i in range(100_000):
            m = Msg(i)
            assert h.submit(m)
            h.table.release(h.dispatch())
        assert len(h.table) == 0

    def test_many_keys_waiting_at_once(self) -> None:
        h = Harness(limit=1)
        for i in range(10_000):
            h.submit(Msg(i))
            h.submit(Msg(i))
        assert len(h.table) == 10_000 and len(h.lane) == 10_000
        while h.lane:
            h.table.release(h.dispatch())
        assert len(h.table) == 0


class TestRate:
    """A rate-limited key enters its lane one message at a time, a token each, on timers."""

    def test_burst_then_one_per_interval_woken_by_a_timer(self) -> None:
        h = Harness(limit=None, rate=RateLimit(10.0, burst=2))
        msgs = [Msg("k", name=str(i)) for i in range(5)]
        assert h.submit(msgs[0]) and not h.submit(msgs[1])  # one in the lane at a time
        h.dispatch()
        assert h.lane == [msgs[1]]  # the second token of the burst
        for m in msgs[2:]:
            h.submit(m)
        h.dispatch()
        assert h.lane == []  # the burst is spent
        h.clock.advance(0.099)
        assert h.lane == []
        h.clock.advance(0.001)
        assert h.lane == [msgs[2]]

    def test_long_run_rate_within_one_percent(self) -> None:
        """With every message dispatched the moment it is eligible, starts follow the rate."""
        rate = 25.0
        h = Harness(limit=None, rate=RateLimit(rate, burst=5))
        starts: list[float] = []

        def admitted(msg: Any) -> None:  # an idle worker takes it at once
            starts.append(h.clock.now())
            h.table.dispatched(msg)

        h.table = KeyTable(None, RateLimit(rate, burst=5), {}, h.clock, admitted)
        for _ in range(5000):
            msg = Msg("k")
            if h.table.arrive(msg):
                admitted(msg)
        while len(starts) < 5000:
            h.clock.advance(1.0)
        measured = (len(starts) - 5) / (starts[-1] - starts[0])
        assert abs(measured - rate) / rate < 0.01
        window = [t for t in starts if t < 10.0]
        assert len(window) <= 5 + rate * 10.0 + 1e-9

    def test_an_idle_key_is_kept_until_its_bucket_is_full(self) -> None:
        h = Harness(limit=None, rate=RateLimit(1.0, burst=3))
        for _ in range(3):
            m = Msg("k")
            assert h.submit(m)
            h.table.release(h.dispatch())
        assert len(h.table) == 1  # forgetting it now would grant a fresh burst
        assert not h.submit(Msg("k"))
        h.clock.advance(1.0)
        assert len(h.lane) == 1  # the waiting message got the next token, not a burst
        h.table.release(h.dispatch())
        h.clock.advance(2.999)
        assert len(h.table) == 1
        h.clock.advance(0.001)
        assert len(h.table) == 0


@pytest.mark.parametrize("limit", [0, -1])
def test_bad_override(limit: int) -> None:
    with pytest.raises(ValueError):
        KeyLimits(concurrency=limit)
