"""The mailbox: two FIFO lanes (priority first), a LIFO idle stack, and room for submitters."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import gevent
import pytest
from gevent.event import Event
from helpers import (
    Gate,
    Manager,
    Resources,
    Unhealthy,
    catching,
    check_health,
    hold_the_worker,
    one_worker,
    record,
    returning,
)

import tasker
from tasker import MonotonicClock
from tasker._fifo import Fifo
from tasker._mailbox import Mailbox
from tasker._message import TaskResult
from tasker.testing import FakeClock


@attrs.frozen
class Named:
    """A task that is only its name: the mailbox moves messages, it never runs them."""

    name: str

    def __call__(self, ctx: tasker.Context, resource: object) -> str:
        return self.name


class NoCancel:
    """The canceller of a bare message: these tests withdraw through the mailbox, not ``cancel()``."""

    hub: Any = None  # no thread waits on a bare message

    def cancel(self, msg: TaskResult) -> bool:
        raise AssertionError("a bare message is never cancelled through its reply")

    def cancel_all(self, msgs: deque[TaskResult]) -> None:
        raise AssertionError("a bare message is never cancelled through its reply")


def message(name: str, priority: bool = False) -> TaskResult:
    """A bare envelope for the mailbox alone; its task is its name."""
    msg = TaskResult()  # the fields TaskManager.submit sets
    msg._fn = Named(name)
    msg._spec = (priority, False, None, NoCancel(), None)
    msg._queued_at = 0.0
    msg._started_at = None
    msg._attempts = 0
    msg._ctx = None
    return msg


def name_of(msg: TaskResult) -> str:
    """The name of a bare message (see ``message``)."""
    task = msg._fn
    assert isinstance(task, Named), task
    return task.name


def names_of(msgs: Iterable[TaskResult]) -> list[str]:
    return [name_of(msg) for msg in msgs]


@attrs.define(eq=False, kw_only=True)
class Taker:
    """What the mailbox reads and writes of a worker (its ``Worker`` protocol), and nothing else.

    Given to ``take`` by a test that never lets it park.
    """

    burst: bool = False
    current: TaskResult | None = None
    idle_since: float = 0.0
    died_parked: bool = False
    keyed: TaskResult | None = None
    greenlet: gevent.Greenlet = attrs.field(factory=gevent.getcurrent)  # the greenlet that calls take


@attrs.define(eq=False)
class FakeWorker(Taker):
    """A Taker whose own greenlet takes messages in a loop and records their names."""

    mailbox: Mailbox
    name: str
    taken: list[str] = attrs.field(factory=list)
    busy: dict[str, Event] = attrs.field(factory=dict)  # message name -> released when done

    def __attrs_post_init__(self) -> None:
        self.greenlet = gevent.spawn(self.run)

    def run(self) -> None:
        while True:
            msg = self.mailbox.take(self)
            if msg is None:
                return
            name = name_of(msg)
            self.taken.append(name)
            hold = self.busy.get(name)
            if hold is not None:
                hold.wait()


def take_all(mailbox: Mailbox) -> list[str]:
    """Drain the lanes as one worker would, without ever parking."""
    taken = []
    while len(mailbox):
        msg = mailbox.take(Taker())
        assert msg is not None
        taken.append(name_of(msg))
    return taken


@attrs.define
class Submitter:
    """Submits to the main lane as the manager does: waits for room (no timeout), then puts."""

    mailbox: Mailbox
    done: list[str] = attrs.field(factory=list)  # the names that got room, in that order

    def submit(self, name: str) -> None:
        self.mailbox.wait_for_room(False, True, None)
        self.done.append(name)
        self.mailbox.put(message(name))


class TestLanes:
    """Without parked workers, messages queue in their lane: priority first, FIFO within each."""

    def test_priority_before_main_fifo_within(self) -> None:
        mailbox = Mailbox(None, MonotonicClock())
        for name, priority in [("m1", False), ("p1", True), ("m2", False), ("p2", True), ("m3", False)]:
            mailbox.put(message(name, priority))
        assert (len(mailbox.main), len(mailbox.priority), len(mailbox)) == (3, 2, 5)
        assert take_all(mailbox) == ["p1", "p2", "m1", "m2", "m3"]

    def test_put_front_goes_to_head_of_its_lane(self) -> None:
        mailbox = Mailbox(None, MonotonicClock())
        mailbox.put(message("m1"))
        mailbox.put(message("p1", True))
        mailbox.put(message("m0"), front=True)
        mailbox.put(message("p0", True), front=True)
        assert take_all(mailbox) == ["p0", "p1", "m0", "m1"]

    def test_remove_queued(self) -> None:
        mailbox = Mailbox(None, MonotonicClock())
        msgs = [message("a"), message("b"), message("c", True)]
        for msg in msgs:
            mailbox.put(msg)
        assert mailbox.remove(msgs[1]) is True
        assert mailbox.remove(msgs[1]) is False
        assert mailbox.remove(msgs[2]) is True
        assert mailbox.remove(message("never queued")) is False
        assert take_all(mailbox) == ["a"]
        assert mailbox.remove(msgs[0]) is False  # taken, no longer queued

    def test_drain_priority_first_and_empties(self) -> None:
        mailbox = Mailbox(None, MonotonicClock())
        for name, priority in [("m1", False), ("p1", True), ("m2", False)]:
            mailbox.put(message(name, priority))
        assert names_of(mailbox.drain()) == ["p1", "m1", "m2"]
        assert len(mailbox) == 0


class TestWithdraw:
    """``remove`` is O(1): a tombstone in the lane, exact counts, FIFO kept, room given back."""

    def queued(
        self, names: Iterable[str], priority: bool = False, max_size: int | None = None
    ) -> tuple[Mailbox, list[TaskResult]]:
        mailbox = Mailbox(max_size, MonotonicClock())
        msgs = [message(name, priority) for name in names]
        for msg in msgs:
            mailbox.put(msg)
        return mailbox, msgs

    def test_withdrawn_then_take_skips_it(self) -> None:
        mailbox, msgs = self.queued("abcde")
        assert mailbox.remove(msgs[2]) is True
        assert (len(mailbox), len(mailbox.main)) == (4, 4)
        assert names_of(mailbox.main) == ["a", "b", "d", "e"]
        assert take_all(mailbox) == ["a", "b", "d", "e"]
        assert mailbox.main.dead == 0  # the tombstone was skipped, not left behind

    @pytest.mark.parametrize("where", [0, -1])
    def test_withdraw_at_the_front_or_the_back(self, where: int) -> None:
        mailbox, msgs = self.queued("abcd")
        assert mailbox.remove(msgs[where]) is True
        expected = ["b", "c", "d"] if where == 0 else ["a", "b", "c"]
        assert len(mailbox) == 3
        assert take_all(mailbox) == expected
        assert len(mailbox) == 0

    def test_withdraw_in_the_priority_lane_counts_there(self) -> None:
        mailbox, prio = self.queued("pq", priority=True)
        main = [message("m")]
        mailbox.put(main[0])
        assert mailbox.remove(prio[0]) is True
        assert (len(mailbox.priority), len(mailbox.main), len(mailbox)) == (1, 1, 2)
        assert take_all(mailbox) == ["q", "m"]

    def test_withdraw_every_message_empties_the_lane(self) -> None:
        mailbox, msgs = self.queued("abc")
        for msg in msgs:
            assert mailbox.remove(msg) is True
        assert len(mailbox) == 0
        assert len(mailbox.main.items) == 0  # nothing kept alive by tombstones
        mailbox.put(message("z"))
        assert take_all(mailbox) == ["z"]

    def test_tombstones_are_compacted_and_order_kept(self) -> None:
        mailbox, msgs = self.queued([f"m{i}" for i in range(1000)])
        for msg in msgs[::3]:  # two thirds stay queued
            mailbox.remove(msg)
        for msg in msgs[1::3]:  # then only one third
            mailbox.remove(msg)
        kept = names_of(msgs[2::3])
        assert len(mailbox) == len(kept)
        assert len(mailbox.main.items) <= 2 * len(kept) + 1  # tombstones never outnumber the queue for long
        assert take_all(mailbox) == kept

    @pytest.mark.parametrize("order", ["oldest first", "newest first"])
    def test_withdrawing_from_an_end_leaves_no_tombstone(self, order: str) -> None:
        # A batch's cleanup withdraws oldest first: each message leaves the deque at once.
        mailbox, msgs = self.queued([f"m{i}" for i in range(200)])
        victims = msgs[:150] if order == "oldest first" else msgs[:49:-1]
        for msg in victims:
            assert mailbox.remove(msg) is True
            assert mailbox.main.dead == 0
            assert len(mailbox.main.items) == len(mailbox.main)
        kept = msgs[150:] if order == "oldest first" else msgs[:50]
        assert take_all(mailbox) == names_of(kept)

    def test_withdraw_at_the_front_behind_a_tombstone_and_in_the_middle(self) -> None:
        mailbox, msgs = self.queued("abcdef")
        assert mailbox.remove(msgs[2]) is True  # c: a tombstone
        assert mailbox.remove(msgs[0]) is True  # a: off the front
        assert mailbox.remove(msgs[1]) is True  # b: off the front, c's tombstone now leads
        assert mailbox.remove(msgs[5]) is True  # f: off the back
        assert (len(mailbox), mailbox.main.dead) == (2, 1)
        assert names_of(mailbox.main) == ["d", "e"]
        assert take_all(mailbox) == ["d", "e"]
        assert (mailbox.main.dead, len(mailbox.main.items)) == (0, 0)

    def test_withdraw_a_redelivered_message(self) -> None:
        mailbox, msgs = self.queued("ab")
        first = mailbox.take(Taker())
        assert first is msgs[0]
        mailbox.put(first, front=True)  # redelivered: the head of its lane again
        assert names_of(mailbox.main) == ["a", "b"]
        assert mailbox.remove(first) is True
        assert mailbox.remove(first) is False
        assert len(mailbox) == 1
        assert take_all(mailbox) == ["b"]

    def test_taken_or_foreign_messages_are_not_withdrawn(self) -> None:
        mailbox, msgs = self.queued("ab")
        assert mailbox.take(Taker()) is msgs[0]
        assert mailbox.remove(msgs[0]) is False
        assert mailbox.remove(message("b")) is False  # same name, another message
        assert mailbox.remove(message("x", True)) is False
        assert len(mailbox) == 1

    def test_drain_leaves_withdrawn_messages_out(self) -> None:
        mailbox, msgs = self.queued("abcd")
        prio = message("p", True)
        mailbox.put(prio)
        mailbox.remove(msgs[1])
        mailbox.remove(msgs[3])
        assert names_of(mailbox.drain()) == ["p", "a", "c"]
        assert len(mailbox) == 0
        assert (len(mailbox.main.items), len(mailbox.priority.items)) == (0, 0)
        mailbox.put(message("after"))
        assert take_all(mailbox) == ["after"]

    def test_withdraw_wakes_a_submitter_waiting_for_room(self) -> None:
        mailbox, msgs = self.queued("abc", max_size=3)
        submitter = Submitter(mailbox)
        waiter = gevent.spawn(submitter.submit, "w")
        gevent.idle()
        assert mailbox.blocked_submitters() == 1
        assert mailbox.remove(msgs[1]) is True  # from the middle: room all the same
        gevent.joinall([waiter], timeout=5)
        assert submitter.done == ["w"]
        assert (len(mailbox), mailbox.blocked_submitters()) == (3, 0)
        assert take_all(mailbox) == ["a", "c", "w"]

    def test_submitters_that_give_up_leave_their_place_at_once(self) -> None:
        # Waiters that time out leave the FIFO in O(1) (a Fifo, not deque.remove), from
        # anywhere in it; the ones left still get the room in their order.
        clock = FakeClock()
        mailbox = Mailbox(2, clock)
        mailbox.put(message("a"))
        mailbox.put(message("b"))
        done: list[int] = []
        gave_up: list[int] = []

        def submit(i: int) -> None:
            try:
                mailbox.wait_for_room(False, True, 1.0 if i % 2 else None)
            except tasker.QueueFullError:
                gave_up.append(i)
                return
            done.append(i)
            mailbox.put(message(str(i)))

        submitters = [gevent.spawn(submit, i) for i in range(200)]
        gevent.idle()
        assert isinstance(mailbox.main.waiters, Fifo)
        assert mailbox.blocked_submitters() == 200
        clock.advance(1.0)  # every odd one gives up
        gevent.idle()
        assert mailbox.blocked_submitters() == 100
        for _ in range(100):
            take_all(mailbox)
            gevent.idle()
        gevent.joinall(submitters, timeout=5)
        assert done == list(range(0, 200, 2))
        assert gave_up == list(range(1, 200, 2))

    def test_a_withdrawn_message_frees_room_once(self) -> None:
        mailbox, msgs = self.queued("ab", max_size=2)
        assert mailbox.remove(msgs[0]) is True
        mailbox.wait_for_room(False, False, None)  # room for one now
        mailbox.put(message("c"))
        with pytest.raises(tasker.QueueFullError):
            mailbox.wait_for_room(False, False, None)
        assert take_all(mailbox) == ["b", "c"]


class TestIdleStack:
    """A message goes straight to the most recently parked worker."""

    @pytest.fixture
    def mailbox(self) -> Iterator[Mailbox]:
        mailbox = Mailbox(None, MonotonicClock())
        yield mailbox
        mailbox.close()
        gevent.idle()

    def test_parked_workers_stack_in_parking_order(self, mailbox: Mailbox) -> None:
        workers = [FakeWorker(mailbox, name) for name in "abc"]
        gevent.idle()
        assert mailbox.idle == workers
        mailbox.put(message("m1"))
        gevent.idle()
        assert workers[2].taken == ["m1"]
        mailbox.put(message("m2"))  # c parked again, on top
        gevent.idle()
        assert [w.taken for w in workers] == [[], [], ["m1", "m2"]]

    def test_lifo_after_busy_period(self, mailbox: Mailbox) -> None:
        a, b, c = (FakeWorker(mailbox, name) for name in "abc")
        holds = {name: Event() for name in ("x", "y", "z")}
        for worker in (a, b, c):
            worker.busy.update(holds)
        gevent.idle()
        for name in ("x", "y", "z"):
            mailbox.put(message(name))
        gevent.idle()
        assert (a.taken, b.taken, c.taken) == (["z"], ["y"], ["x"])
        assert mailbox.idle == []
        # Finish in the order a, c, b: b parks last, so it is on top.
        for name in ("z", "x", "y"):
            holds[name].set()
            gevent.idle()
        assert mailbox.idle == [a, c, b]
        mailbox.put(message("next"))
        gevent.idle()
        assert b.taken == ["y", "next"]

    def test_handoff_does_not_queue(self, mailbox: Mailbox) -> None:
        worker = FakeWorker(mailbox, "a")
        gevent.idle()
        msg = message("m", priority=True)
        mailbox.put(msg)
        assert len(mailbox) == 0
        assert worker.current is msg
        gevent.idle()
        assert worker.taken == ["m"]

    def test_idle_since_is_the_parking_time(self) -> None:
        clock = FakeClock(start=7.0)
        mailbox = Mailbox(None, clock)
        worker = FakeWorker(mailbox, "a")
        gevent.idle()
        assert worker.idle_since == 7.0
        clock.advance(3.0)
        mailbox.put(message("m"))
        gevent.idle()
        assert worker.idle_since == 10.0
        mailbox.close()
        gevent.idle()
        assert worker.greenlet.dead

    def test_close_ends_parked_workers_after_the_lanes_empty(self, mailbox: Mailbox) -> None:
        hold = Event()
        busy = FakeWorker(mailbox, "busy", busy={"h": hold})
        parked = FakeWorker(mailbox, "parked")
        gevent.idle()
        mailbox.put(message("h"))  # to parked (top)
        gevent.idle()
        mailbox.put(message("q1"))  # to busy
        mailbox.put(message("q2"))
        mailbox.put(message("q3"))
        gevent.idle()
        mailbox.close()
        gevent.idle()
        assert mailbox.idle == []
        hold.set()
        gevent.joinall([busy.greenlet, parked.greenlet], timeout=5)
        assert busy.greenlet.dead and parked.greenlet.dead
        assert sorted(busy.taken + parked.taken) == ["h", "q1", "q2", "q3"]


class TestRoomInIsolation:
    """With ``max_size``, submitters wait for room in their own lane, in FIFO order."""

    def full(self, max_size: int = 1) -> tuple[Mailbox, list[TaskResult]]:
        mailbox = Mailbox(max_size, MonotonicClock())
        msgs = [message(f"m{i}") for i in range(max_size)]
        for msg in msgs:
            mailbox.put(msg)
        return mailbox, msgs

    def test_no_block_raises_at_once(self) -> None:
        mailbox, _ = self.full()
        with pytest.raises(tasker.QueueFullError):
            mailbox.wait_for_room(False, False, None)
        mailbox.wait_for_room(True, False, None)  # the priority lane has room

    def test_timeout(self) -> None:
        mailbox, _ = self.full()
        started = time.monotonic()
        with pytest.raises(tasker.QueueFullError):
            mailbox.wait_for_room(False, True, 0.02)
        assert time.monotonic() - started >= 0.015
        assert mailbox.blocked_submitters() == 0

    def test_waiters_get_room_in_order(self) -> None:
        mailbox, msgs = self.full()
        submitter = Submitter(mailbox)
        waiters = [gevent.spawn(submitter.submit, name) for name in ("w1", "w2")]
        gevent.idle()
        assert mailbox.blocked_submitters() == 2
        assert mailbox.remove(msgs[0])
        gevent.idle()
        assert submitter.done == ["w1"]
        assert mailbox.blocked_submitters() == 1
        assert take_all(mailbox) == ["w1"]
        gevent.joinall(waiters, timeout=5)
        assert submitter.done == ["w1", "w2"]

    def test_waiters_keep_their_place_when_a_submitter_barges_in(self) -> None:
        mailbox, msgs = self.full()
        submitter = Submitter(mailbox)
        first = gevent.spawn(submitter.submit, "first")
        gevent.idle()
        second = gevent.spawn(submitter.submit, "second")
        gevent.idle()
        assert mailbox.remove(msgs[0])  # room: "first" is woken...
        submitter.submit("barger")  # ...but a new submitter takes the room before it runs
        gevent.idle()
        assert submitter.done == ["barger"]
        assert take_all(mailbox) == ["barger"]  # room again
        gevent.idle()
        try:
            assert submitter.done == ["barger", "first"]
        finally:
            mailbox.close()
            gevent.joinall([first, second], timeout=5)

    def test_close_releases_waiters(self) -> None:
        mailbox, _ = self.full()
        waiters = [gevent.spawn(mailbox.wait_for_room, p, True, None) for p in (False, False)]
        gevent.idle()
        mailbox.close()
        gevent.joinall(waiters, timeout=5)
        assert all(w.successful() for w in waiters)
        assert mailbox.blocked_submitters() == 0

    def test_a_waiter_giving_up_as_it_is_woken_passes_the_room_on(self) -> None:
        mailbox, msgs = self.full()
        outcome: list[str] = []

        class GiveUp(Exception):
            pass

        def submit(name: str) -> None:
            try:
                mailbox.wait_for_room(False, True, None)
            except GiveUp:
                outcome.append(f"{name} gave up")
            else:
                outcome.append(f"{name} got room")

        first, second = gevent.spawn(submit, "first"), gevent.spawn(submit, "second")
        gevent.idle()
        first.kill(GiveUp, block=False)  # lands before the wake-up below
        assert mailbox.remove(msgs[0])  # wakes "first", which is leaving
        gevent.joinall([first, second], timeout=5)
        assert outcome == ["first gave up", "second got room"]


class TestManagerOrder:
    """Through a TaskManager: a worker always takes priority messages first, each lane FIFO."""

    def test_priority_lane_first_fifo_within(self) -> None:
        resources = Resources()
        order: list[str] = []
        with Manager(one_worker(resources)) as manager:
            gate, held = hold_the_worker(manager)
            plan = [("m1", False), ("m2", False), ("p1", True), ("m3", False), ("p2", True), ("p3", True)]
            replies = [manager.submit(record(order, n), priority=p) for n, p in plan]
            stats = manager.stats()
            assert (stats.queued_tasks, stats.priority_tasks, stats.busy_workers) == (3, 3, 1)
            gate.release.set()
            assert [r.get(timeout=5) for r in replies] == [n for n, _ in plan]
            assert held.get(timeout=5) == "gate"
        assert order == ["p1", "p2", "p3", "m1", "m2", "m3"]
        resources.assert_all_destroyed_once()

    def test_priority_overtakes_even_when_submitted_last(self) -> None:
        resources = Resources()
        order: list[int | str] = []
        with Manager(one_worker(resources)) as manager:
            gate, _ = hold_the_worker(manager)
            replies = [manager.submit(record(order, i)) for i in range(20)]
            urgent = manager.submit(record(order, "urgent"), priority=True)
            gate.release.set()
            urgent.get(timeout=5)
            gevent.joinall(replies, timeout=5)
        assert order == ["urgent", *range(20)]

    def test_cancel_removes_a_queued_message(self) -> None:
        resources = Resources()
        order: list[str] = []
        with Manager(one_worker(resources)) as manager:
            gate, _ = hold_the_worker(manager)
            keep = manager.submit(record(order, "keep"))
            drop = manager.submit(record(order, "drop"))
            assert manager.stats().queued_tasks == 2
            assert drop.cancel() is True
            assert manager.stats().queued_tasks == 1
            with pytest.raises(tasker.CancelledError):
                drop.get(timeout=5)
            gate.release.set()
            assert keep.get(timeout=5) == "keep"
            assert drop.cancel() is False
        assert order == ["keep"]


class TestManagerCancel:
    """Through a TaskManager: cancel() anywhere in a deep lane keeps stats() exact and order."""

    def test_cancel_in_the_middle_of_a_deep_lane(self) -> None:
        resources = Resources()
        order: list[int] = []
        with Manager(one_worker(resources)) as manager:
            gate, _ = hold_the_worker(manager)
            replies = [manager.submit(record(order, i), priority=i % 2 == 1) for i in range(200)]
            dropped = set(range(0, 200, 7)) | {198, 199}
            for i in sorted(dropped, reverse=True):
                assert replies[i].cancel() is True
            stats = manager.stats()
            kept = [i for i in range(200) if i not in dropped]
            assert stats.priority_tasks == sum(1 for i in kept if i % 2 == 1)
            assert stats.queued_tasks == sum(1 for i in kept if i % 2 == 0)
            gate.release.set()
            for i in kept:
                assert replies[i].get(timeout=5) == i
            for i in dropped:
                with pytest.raises(tasker.CancelledError):
                    replies[i].get(timeout=5)
        odd, even = [i for i in kept if i % 2], [i for i in kept if not i % 2]
        assert order == odd + even  # priority lane first, FIFO within each
        assert manager.metrics().total_tasks_cancelled == len(dropped)

    def test_cancel_a_redelivered_message_while_it_is_queued(self) -> None:
        creating, create = Event(), Event()
        made: list[object] = []

        def on_create() -> object:
            if len(made) == 2:  # the replacement of the unhealthy worker: hold it
                creating.set()
                create.wait()
            made.append(object())
            return made[-1]

        config = tasker.Config(
            on_create=on_create, worker_count=2, max_worker_count=2, resource_pool_size=0, check_health=check_health
        )
        runs: list[str] = []
        started, fail = Event(), Event()

        def flaky(ctx: tasker.Context, resource: object) -> str:
            runs.append("flaky")
            started.set()
            fail.wait()
            raise Unhealthy("bad resource")

        with tasker.TaskManager[object, Any](config) as manager:
            gate, held = hold_the_worker(manager)
            redelivered = manager.submit(flaky)
            assert started.wait(5)
            after = manager.submit(record([], "after"))
            fail.set()
            assert creating.wait(5)  # the supervisor redelivered it before replacing the worker
            assert redelivered.attempts == 1
            assert [m for m in manager._mailbox.main] == [redelivered, after]
            assert manager.stats().queued_tasks == 2
            assert redelivered.cancel() is True
            assert manager.stats().queued_tasks == 1
            with pytest.raises(tasker.CancelledError):
                redelivered.get(timeout=5)
            create.set()
            gate.release.set()
            assert after.get(timeout=5) == "after"
            assert held.get(timeout=5) == "gate"
        assert runs == ["flaky"]  # withdrawn for good: never ran again

    def test_cancel_in_the_middle_makes_room_for_a_blocked_submitter(self) -> None:
        resources = Resources()
        manager = Manager(one_worker(resources, max_queue_size=3))
        gate, _ = hold_the_worker(manager)
        replies = [manager.submit(returning(i)) for i in range(3)]
        waiting = gevent.spawn(manager.submit, lambda ctx, r: "late")
        gevent.idle()
        assert manager.stats().blocked_submitters == 1
        assert replies[1].cancel() is True
        late = waiting.get(timeout=5)
        stats = manager.stats()
        assert (stats.queued_tasks, stats.blocked_submitters) == (3, 0)
        gate.release.set()
        assert [replies[0].get(timeout=5), replies[2].get(timeout=5), late.get(timeout=5)] == [0, 2, "late"]
        assert manager.stop() is True
        resources.assert_all_destroyed_once()

    def test_kill_fails_the_queued_but_not_the_withdrawn(self) -> None:
        resources = Resources()
        manager = Manager(one_worker(resources))
        hold_the_worker(manager)
        replies = [manager.submit(returning(i)) for i in range(5)]
        for i in (0, 2, 4):
            replies[i].cancel()
        manager.kill()
        for i, reply in enumerate(replies):
            expected = tasker.TaskKilledError if i % 2 else tasker.CancelledError
            with pytest.raises(expected):
                reply.get(timeout=5)
        assert manager.metrics().total_tasks_cancelled == 5 + 1  # three cancels, two dropped, the gate
        resources.assert_all_destroyed_once()


def resource_task(seen: list[int]) -> Callable[[tasker.Context, int], int]:
    """A task that appends the resource it ran with to ``seen`` and returns it."""

    def task(ctx: tasker.Context, resource: int) -> int:
        seen.append(resource)
        return resource

    return task


@attrs.define
class HoldingGate(Gate):
    """A Gate that also remembers the resource it ran with."""

    resource: int | None = None

    def __call__(self, ctx: tasker.Context, resource: Any) -> Any:
        self.resource = resource
        return super().__call__(ctx, resource)

    @property
    def ran_with(self) -> int:
        assert self.resource is not None, "the gate has not run yet"
        return self.resource


class TestManagerIdleStack:
    """Through a TaskManager: the most recently parked worker gets the next message."""

    def test_hot_worker_stays_hot(self) -> None:
        resources = Resources()
        with Manager(one_worker(resources, worker_count=3)) as manager:
            seen: list[int] = []
            for _ in range(6):
                manager.queue_task(resource_task(seen))
        # The first message may be queued before any worker parks; from then on the
        # worker that just finished is on top of the stack and takes every next one.
        assert len(set(seen[1:])) == 1, seen

    def test_last_parked_first_served(self) -> None:
        resources = Resources()
        with Manager(one_worker(resources, worker_count=3)) as manager:
            gates = [HoldingGate() for _ in range(3)]
            replies = [manager.submit(g) for g in gates]
            for gate in gates:
                assert gate.started.wait(5)
            ids = [g.ran_with for g in gates]
            assert sorted(ids) == sorted(resources.created)  # one per worker
            # Release in the order 0, 2, 1: the worker of gate 1 parks last.
            for i in (0, 2, 1):
                gates[i].release.set()
                replies[i].get(timeout=5)
            seen: list[int] = []
            assert manager.queue_task(resource_task(seen)) == ids[1]
            # Hold that worker: the next parked one down the stack is gate 2's.
            hold = HoldingGate()
            held = manager.submit(hold)
            assert hold.started.wait(5)
            assert hold.ran_with == ids[1]
            assert manager.queue_task(resource_task(seen)) == ids[2]
            hold.release.set()
            held.get(timeout=5)
        resources.assert_all_destroyed_once()


class TestBoundedQueue:
    """With ``max_queue_size``, submitters wait for room, time out, or are told to go away."""

    def filled(self, resources: Resources, size: int = 2, **kwargs: Any) -> tuple[Manager, Gate, list[TaskResult]]:
        manager = Manager(one_worker(resources, max_queue_size=size, **kwargs))
        gate, held = hold_the_worker(manager)
        replies = [held] + [manager.submit(returning(i)) for i in range(size)]
        assert manager.stats().queued_tasks == size
        return manager, gate, replies

    def test_block_false_raises_at_once(self) -> None:
        resources = Resources()
        manager, gate, replies = self.filled(resources)
        with pytest.raises(tasker.QueueFullError):
            manager.submit(lambda ctx, r: None, block=False)
        assert manager.stats().queued_tasks == 2
        assert manager.stats().blocked_submitters == 0
        urgent = manager.submit(lambda ctx, r: "urgent", priority=True, block=False)  # own lane
        gate.release.set()
        assert urgent.get(timeout=5) == "urgent"
        assert [r.get(timeout=5) for r in replies] == ["gate", 0, 1]
        assert manager.stop() is True
        resources.assert_all_destroyed_once()

    def test_timeout_raises_after_the_wait(self) -> None:
        resources = Resources()
        manager, gate, _ = self.filled(resources)
        started = time.monotonic()
        with pytest.raises(tasker.QueueFullError):
            manager.submit(lambda ctx, r: None, timeout=0.05)
        assert time.monotonic() - started >= 0.04
        assert manager.stats().blocked_submitters == 0
        assert manager.stats().queued_tasks == 2
        gate.release.set()
        assert manager.stop() is True

    def test_blocked_submitter_proceeds_once_room_appears(self) -> None:
        resources = Resources()
        manager, gate, replies = self.filled(resources)
        submitters = [gevent.spawn(manager.queue_task, lambda ctx, r, i=i: f"late{i}") for i in range(3)]
        gevent.idle()
        assert manager.stats().blocked_submitters == 3
        assert not any(s.ready() for s in submitters)
        gate.release.set()
        gevent.joinall(submitters, timeout=5)
        assert [s.get() for s in submitters] == ["late0", "late1", "late2"]
        assert [r.get(timeout=5) for r in replies] == ["gate", 0, 1]
        assert manager.stats().blocked_submitters == 0
        assert manager.stop() is True

    def test_blocked_submitters_counted_per_lane(self) -> None:
        resources = Resources()
        manager, gate, _ = self.filled(resources, size=1)
        manager.submit(lambda ctx, r: None, priority=True)
        main = gevent.spawn(manager.submit, lambda ctx, r: None)
        prio = gevent.spawn(manager.submit, lambda ctx, r: None, priority=True)
        gevent.idle()
        stats = manager.stats()
        assert (stats.blocked_submitters, stats.queued_tasks, stats.priority_tasks) == (2, 1, 1)
        gate.release.set()
        gevent.joinall([main, prio], timeout=5)
        assert main.successful() and prio.successful()
        assert manager.stop() is True

    def test_cancel_makes_room(self) -> None:
        resources = Resources()
        manager, gate, replies = self.filled(resources, size=1)
        waiting = gevent.spawn(manager.submit, lambda ctx, r: "after cancel")
        gevent.idle()
        assert manager.stats().blocked_submitters == 1
        assert replies[1].cancel()
        reply = waiting.get(timeout=5)
        assert manager.stats().queued_tasks == 1
        gate.release.set()
        assert reply.get(timeout=5) == "after cancel"
        assert manager.stop() is True

    def test_stop_wakes_blocked_submitters(self) -> None:
        resources = Resources()
        manager, gate, replies = self.filled(resources)
        submitters = [gevent.spawn(catching, manager.submit, lambda ctx, r: None) for _ in range(3)]
        gevent.idle()
        assert manager.stats().blocked_submitters == 3
        stopper = gevent.spawn(manager.stop)
        gevent.joinall(submitters, timeout=5)
        for submitter in submitters:
            assert isinstance(submitter.value, tasker.ManagerStoppedError)
        assert not stopper.ready()  # still draining behind the gate
        gate.release.set()
        assert stopper.get(timeout=5) is True
        assert [r.get(timeout=5) for r in replies] == ["gate", 0, 1]
        resources.assert_all_destroyed_once()

    def test_kill_wakes_blocked_submitters(self) -> None:
        resources = Resources()
        manager, _, replies = self.filled(resources)
        submitters = [gevent.spawn(catching, manager.queue_task, lambda ctx, r: None) for _ in range(2)]
        gevent.idle()
        assert manager.stats().blocked_submitters == 2
        manager.kill()
        gevent.joinall(submitters, timeout=5)
        for submitter in submitters:
            assert isinstance(submitter.value, tasker.ManagerStoppedError)
        for reply in replies:
            with pytest.raises(tasker.TaskKilledError):
                reply.get(timeout=5)
        resources.assert_all_destroyed_once()

    def test_room_timeout_runs_on_the_manager_clock(self) -> None:
        resources = Resources()
        clock = FakeClock()
        manager, gate, _ = self.filled(resources, clock=clock)
        try:
            waiting = gevent.spawn(catching, manager.submit, lambda ctx, r: None, timeout=30.0)
            gevent.idle()
            assert manager.stats().blocked_submitters == 1
            clock.advance(30.0)
            assert waiting.ready()
            assert isinstance(waiting.value, tasker.QueueFullError)
        finally:
            gate.release.set()
            manager.kill()
