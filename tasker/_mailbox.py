"""The mailbox: two FIFO lanes, an idle stack of workers, and room for submitters.

Idle workers park on their own one-slot mailbox (a raw switch into the hub), stacked
LIFO: a submission that finds an idle worker hands the message straight to the most
recently parked one — O(1) however many are parked, and hot workers stay hot. Base
and burst workers park on two stacks, and a message goes to an idle base worker first:
so after a spike the burst workers, not the base ones, are the surplus that stays
parked, and the bottom of the burst stack (parked longest) is where the scaler retires
them. A worker only parks when both lanes are empty, so a parked worker means empty
lanes: every taker sees priority messages first.

With ``max_size``, each lane holds at most that many messages; submitters wait for
room on a FIFO of gevent waiters, each woken when a message leaves the lane (a
redelivered message goes in regardless, so a lane can briefly hold one more per
redelivery: the supervisor never blocks).

Withdrawing a queued message (``cancel()``) is O(1) however deep the lane: each lane
keeps its messages in order in a deque and the ones still queued in a dict (a dict
rather than a set: the garbage collector walks its dense entries, not a sparse table
that never shrinks). A withdrawn message leaves the dict at once (so every count is exact) and stays in the deque as a
tombstone that ``take`` skips; when tombstones outnumber the queued messages the deque
is rebuilt without them, so memory stays proportional to what is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import gevent
from gevent.hub import Waiter

from ._clock import Clock
from ._errors import QueueFullError
from ._message import TaskResult

__all__ = ["RETIRE", "Lane", "Mailbox"]


class Worker(Protocol):
    """What the mailbox uses of a worker that parks in it."""

    burst: bool
    current: TaskResult | None
    idle_since: float
    died_parked: bool
    greenlet: Any


RETIRE: Any = object()  # wake-up value that tells a parked worker to exit


_COMPACT_MIN = 64  # tombstones a lane may hold before it is worth rebuilding


class Lane:
    """One FIFO lane of messages, with the submitters waiting for room in it.

    ``len`` and iteration see only the messages still queued, oldest first.
    """

    __slots__ = ("dead", "items", "live", "waiters")

    def __init__(self) -> None:
        self.items: deque[TaskResult] = deque()  # queued messages in order, and tombstones
        self.live: dict[TaskResult, None] = {}  # the messages still queued (as keys)
        self.dead = 0  # tombstones in ``items``: withdrawn messages not yet skipped
        self.waiters: deque[Waiter] = deque()

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[TaskResult]:
        live = self.live
        return (msg for msg in self.items if msg in live)

    def withdraw(self, msg: TaskResult) -> bool:
        """Leave ``msg`` behind as a tombstone; False if it is not queued here."""
        live = self.live
        if msg not in live:
            return False
        del live[msg]
        self.dead += 1
        if not live:
            self.items.clear()
            self.dead = 0
        elif self.dead > _COMPACT_MIN and self.dead > len(live):
            # Amortized O(1): at least half of what is rebuilt was tombstones.
            self.items = deque(m for m in self.items if m in live)
            self.dead = 0
        return True

    def clear(self) -> None:
        self.items.clear()
        self.live.clear()
        self.dead = 0


class Mailbox:
    """Where messages wait and where idle workers park."""

    __slots__ = (
        "_call_later",
        "_now",
        "_run_callback",
        "_switch_to_hub",
        "closing",
        "idle",
        "idle_burst",
        "main",
        "max_size",
        "priority",
    )

    def __init__(self, max_size: int | None, clock: Clock) -> None:
        hub = gevent.get_hub()
        self._run_callback = hub.loop.run_callback
        self._switch_to_hub = hub.switch
        self._now = clock.now
        self._call_later = clock.call_later
        self.main = Lane()
        self.priority = Lane()
        self.idle: list[Worker] = []  # parked base workers, LIFO
        self.idle_burst: list[Worker] = []  # parked burst workers, LIFO; used only when no base worker is idle
        self.max_size = max_size
        self.closing = False  # draining or killed: workers exit instead of parking

    def __len__(self) -> int:
        return len(self.main.live) + len(self.priority.live)

    def put(self, msg: TaskResult, front: bool = False) -> None:
        """Hand ``msg`` to the most recently parked worker, or queue it in its lane."""
        if self.idle or self.idle_burst:
            worker = self.idle.pop() if self.idle else self.idle_burst.pop()
            worker.current = msg
            self._run_callback(worker.greenlet.switch, msg)
        else:
            lane = self.priority if msg._priority else self.main
            lane.live[msg] = None
            if front:
                lane.items.appendleft(msg)  # a redelivery: the head of its lane
            else:
                lane.items.append(msg)

    def take(self, worker: Worker) -> TaskResult | None:
        """The worker's next message, parking it while there is none; None: exit."""
        while True:
            lane = self.priority if self.priority.live else self.main
            live = lane.live
            if live:
                msg = lane.items.popleft()
                if lane.dead:  # withdrawn messages may come first: skip them
                    while msg not in live:
                        lane.dead -= 1
                        msg = lane.items.popleft()
                del live[msg]
                if lane.waiters:
                    self._wake_one(lane)
                return msg
            if self.closing:
                return None
            worker.idle_since = self._now()
            stack = self.idle_burst if worker.burst else self.idle
            stack.append(worker)
            try:
                woken = self._switch_to_hub()
            except BaseException:
                # Killed or timed out while parked (a timer a task left behind): leave the
                # stack at once so nothing is handed to a dead greenlet. A message already
                # handed over stays ``worker.current`` for the supervisor to redeliver.
                if worker in stack:
                    stack.remove(worker)
                worker.died_parked = True
                raise
            if woken is RETIRE:
                return None
            if woken is not None:
                return woken  # type: ignore[no-any-return]
            # None: woken to look again (the manager is closing)

    def close(self) -> None:
        """From now on workers exit when the lanes are empty; wake everyone waiting."""
        self.closing = True
        idle, self.idle, self.idle_burst = self.idle + self.idle_burst, [], []
        for worker in idle:
            self._run_callback(worker.greenlet.switch, None)
        for lane in (self.main, self.priority):
            while lane.waiters:
                self._wake_one(lane)

    def retire_idle_bursts(self, cutoff: float) -> int:
        """Unpark and end the burst workers parked since ``cutoff`` or earlier.

        The burst stack is ordered by parking time, so they are one prefix of it.
        Returns how many were retired.
        """
        idle = self.idle_burst
        end = 0
        while end < len(idle) and idle[end].idle_since <= cutoff:
            end += 1
        for worker in idle[:end]:
            self._run_callback(worker.greenlet.switch, RETIRE)
        del idle[:end]
        return end

    def remove(self, msg: TaskResult) -> bool:
        """Withdraw a queued message in O(1); False if it is not queued."""
        lane = self.priority if msg._priority else self.main
        if not lane.withdraw(msg):
            return False
        if lane.waiters:
            self._wake_one(lane)
        return True

    def drain(self) -> list[TaskResult]:
        """Take every queued message out, priority first; the room goes to waiting submitters."""
        msgs = [*self.priority, *self.main]
        for lane in (self.priority, self.main):
            lane.clear()
            while lane.waiters:
                self._wake_one(lane)
        return msgs

    def wait_for_room(self, priority: bool, block: bool, timeout: float | None) -> None:
        """Block the submitter until its lane has room (cooperatively, in FIFO order).

        Raises:
            QueueFullError: no room at once with ``block=False``, or within ``timeout``
                seconds of the manager's clock.
        """
        lane = self.priority if priority else self.main
        max_size = self.max_size
        assert max_size is not None
        if len(lane.live) < max_size or self.closing:
            return
        name = "priority" if priority else "main"
        if not block:
            raise QueueFullError(f"the {name} lane is full ({max_size} messages)")
        waiter = Waiter()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            try:
                lane.waiters.remove(waiter)
            except ValueError:
                return  # already woken for room, or not waiting right now
            self._run_callback(waiter.switch, None)

        timer = self._call_later(timeout, expire) if timeout is not None else None
        enter = lane.waiters.append
        try:
            while len(lane.live) >= max_size and not self.closing:
                if expired:
                    raise QueueFullError(f"no room in the {name} lane within {timeout} s")
                enter(waiter)
                enter = lane.waiters.appendleft  # woken but beaten to the room: keep our place
                try:
                    waiter.get()
                except BaseException:
                    self._leave(lane, waiter)
                    raise
        finally:
            if timer is not None:
                timer.cancel()

    def blocked_submitters(self) -> int:
        return len(self.main.waiters) + len(self.priority.waiters)

    def _leave(self, lane: Lane, waiter: Waiter) -> None:
        try:
            lane.waiters.remove(waiter)
        except ValueError:
            # We were woken as we gave up: pass the room on so it is not lost.
            if len(lane.live) < (self.max_size or 0) and lane.waiters:
                self._wake_one(lane)

    def _wake_one(self, lane: Lane) -> None:
        self._run_callback(lane.waiters.popleft().switch, None)
