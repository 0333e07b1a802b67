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
room on a FIFO of gevent waiters (a :class:`~tasker._fifo.Fifo`: one that times out or
is killed leaves it in O(1)), each woken when a message leaves the lane (a
redelivered message goes in regardless, so a lane can briefly hold one more per
redelivery: the supervisor never blocks).

Withdrawing a queued message (``cancel()``) is O(1) however deep the lane: a lane is a
:class:`Lane`, a deque with tombstones, and a queued message knows its lane. The
plain paths of ``put`` and ``take`` are also written inline in ``TaskManager.submit``
and ``Worker._loop`` (the hot path; see the architecture page).

**Gated dispatch** (keys, rate limits, retry delays): the first keyed message, a global
rate limit or a retry delay switches the mailbox to its gated paths; until then ``put``
and ``take`` cost one check more than plain lanes. Gated, the lanes still hold only
messages a worker may run at once: a keyed message enters its lane only with a slot of
its key (see ``_keys``), and waits in its key's backlog otherwise, blocking no other
key. A worker holds its message's slot until it comes back to ``take`` (or the
supervisor reaps it), so "in flight" means exactly "a worker is on it". A global rate
limit is checked when a worker takes a message: with no token the worker parks and one
timer hands the lane's head to a parked worker when the next token is due. A message
waiting out a retry backoff sits in ``delayed`` with its timer, then re-enters at the
head of its lane (or of its key's backlog). Backlogged and delayed messages count in
their lane's size (``max_size``, ``len``), and while the manager closes, workers stay
parked rather than exit as long as any of them remains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Protocol

import gevent
from gevent.hub import Waiter

from ._clock import Clock, TimerHandle
from ._errors import QueueFullError
from ._fifo import Fifo, Tombstones
from ._keys import KeyLimits, KeyTable
from ._message import TaskResult
from ._ratelimit import RateLimit, TokenBucket

__all__ = ["RETIRE", "Lane", "Mailbox"]


class Worker(Protocol):
    """What the mailbox uses of a worker that parks in it."""

    burst: bool
    current: TaskResult | None
    idle_since: float
    died_parked: bool
    greenlet: Any
    keyed: TaskResult | None


RETIRE: Any = object()  # wake-up value that tells a parked worker to exit


class Lane(Tombstones):
    """One FIFO lane of eligible messages, with the submitters waiting for room in it.

    A queued message knows its lane (``msg._lane``), so a lane needs no index of what
    it holds: withdrawing a message clears its ``_lane`` (see :class:`Tombstones` for
    the deque). ``items`` is empty exactly when no message is queued, so its truth is
    the lane's. ``len`` and iteration see only the eligible messages, oldest first;
    ``size()`` adds the lane's messages waiting for their key (``blocked``) or a retry
    (``delayed``).

    A queued message is never answered: whatever answers one takes it out first
    (``cancel()`` withdraws it, kill() and the supervisor drain the mailbox), so a
    worker that pops a lane's head runs it without asking ``ready()``.
    """

    __slots__ = ("blocked", "delayed", "waiters")

    items: deque[TaskResult]

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0  # messages of this lane waiting in a key's backlog
        self.delayed = 0  # messages of this lane waiting out a retry backoff
        self.waiters = Fifo()  # submitters' Waiters, FIFO; one that gives up leaves in O(1)

    def __len__(self) -> int:
        return len(self.items) - self.dead

    def __iter__(self) -> Iterator[TaskResult]:
        return (msg for msg in self.items if msg._lane is self)

    def queued(self, item: Any) -> bool:
        return item._lane is self

    def size(self) -> int:
        return len(self.items) - self.dead + self.blocked + self.delayed

    def append(self, msg: TaskResult) -> None:
        msg._lane = self
        self.items.append(msg)

    def appendleft(self, msg: TaskResult) -> None:
        msg._lane = self
        self.items.appendleft(msg)

    def popleft(self) -> TaskResult:
        """The oldest queued message, removed; the lane must not be empty."""
        msg = self.items.popleft()
        if self.dead:
            msg = self.skip(msg)
        msg._lane = None
        return msg

    def withdraw(self, msg: TaskResult) -> bool:
        """Take ``msg`` out; False if it is not queued here."""
        if getattr(msg, "_lane", None) is not self:  # a message handed straight to a worker has none
            return False
        msg._lane = None
        self.withdrawn(msg)
        return True

    def clear(self) -> None:
        for msg in self.items:
            msg._lane = None
        self.items.clear()
        self.dead = 0


class Mailbox:
    """Where messages wait and where idle workers park."""

    __slots__ = (
        "_call_later",
        "_now",
        "_run_callback",
        "_switch_to_hub",
        "_throttle_timer",
        "closing",
        "delayed",
        "gated",
        "idle",
        "idle_burst",
        "keys",
        "main",
        "max_size",
        "priority",
        "throttle",
    )

    def __init__(
        self,
        max_size: int | None,
        clock: Clock,
        *,
        key_concurrency: int | None = None,
        key_rate: RateLimit | None = None,
        key_limits: Mapping[Hashable, KeyLimits] | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
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
        self.keys = KeyTable(key_concurrency, key_rate, key_limits or {}, clock, self._admitted)
        self.throttle = None if rate_limit is None else TokenBucket(rate_limit, clock.now())
        self._throttle_timer: TimerHandle | None = None
        self.delayed: dict[TaskResult, TimerHandle] = {}  # waiting out a retry backoff
        self.gated = self.throttle is not None  # the gated paths are in use

    def __len__(self) -> int:
        return self.main.size() + self.priority.size()

    def eligible(self) -> int:
        """Messages a worker could take now (the scaler's backlog): no more than the
        global rate has tokens for, since a worker started for the others would only park."""
        count = len(self.main) + len(self.priority)
        if count and self.throttle is not None:
            return min(count, self.throttle.tokens(self._now()))
        return count

    def put(self, msg: TaskResult, front: bool = False) -> None:
        """Hand ``msg`` to the most recently parked worker, or queue it in its lane."""
        if msg._spec[4] is not None or self.throttle is not None:  # _spec[4]: _extra, without a property call
            self._put_gated(msg, front)
        elif self.idle or self.idle_burst:
            worker = self.idle.pop() if self.idle else self.idle_burst.pop()
            worker.current = msg
            self._run_callback(worker.greenlet.switch, msg)
        else:
            lane = self.priority if msg._priority else self.main
            if front:
                lane.appendleft(msg)  # a redelivery: the head of its lane
            else:
                lane.append(msg)

    def take(self, worker: Worker) -> TaskResult | None:
        """The worker's next message, parking it while there is none; None: exit."""
        if self.gated:
            return self._take_gated(worker)
        while True:
            lane = self.priority if self.priority.items else self.main
            if lane.items:
                msg = lane.popleft()
                if lane.waiters.live:
                    self.wake_one(lane)
                return msg
            if self.closing:
                return None
            woken = self._park(worker)
            if woken is RETIRE:
                return None
            if woken is not None:
                return woken  # type: ignore[no-any-return]
            # None: woken to look again (the manager is closing)
            if self.gated:  # gated since it parked: delayed or key-blocked messages may remain
                return self._take_gated(worker)

    def _park(self, worker: Worker) -> Any:
        """Park the worker on its stack until something wakes it; what it was woken with."""
        worker.idle_since = self._now()
        stack = self.idle_burst if worker.burst else self.idle
        stack.append(worker)
        try:
            return self._switch_to_hub()
        except BaseException:
            # Killed or timed out while parked (a timer a task left behind): leave the
            # stack at once so nothing is handed to a dead greenlet. A message already
            # handed over stays ``worker.current`` for the supervisor to redeliver.
            if worker in stack:
                stack.remove(worker)
            worker.died_parked = True
            raise

    # -- gated dispatch: keys, the global rate limit, retry delays --------------------

    def _put_gated(self, msg: TaskResult, front: bool) -> None:
        self.gated = True
        if msg._key is not None and not self.keys.arrive(msg, front):
            (self.priority if msg._priority else self.main).blocked += 1
            return
        self._ready(msg, front)

    def _ready(self, msg: TaskResult, front: bool = False) -> bool:
        """An eligible message: to a parked worker if the rate allows, else to its lane.

        Returns True if it was handed to a worker.
        """
        throttle = self.throttle
        if (self.idle or self.idle_burst) and (
            throttle is None or (not self.priority.items and not self.main.items and throttle.take(self._now()))
        ):  # messages waiting for the rate's next token go before this one: it waits behind them
            self._hand(self.idle.pop() if self.idle else self.idle_burst.pop(), msg)
            return True
        lane = self.priority if msg._priority else self.main
        if front:
            lane.appendleft(msg)
        else:
            lane.append(msg)
        if throttle is not None and (self.idle or self.idle_burst):
            if throttle.wait(self._now()):
                self._await_token()
            else:  # a token is due, its timer not run yet: the heads of the lanes take it now, in order
                if self._throttle_timer is not None:
                    self._throttle_timer.cancel()
                self._on_token()
        return False

    def _hand(self, worker: Worker, msg: TaskResult) -> None:
        if msg._key is not None:
            worker.keyed = msg
            self.keys.dispatched(msg)
        worker.current = msg
        self._run_callback(worker.greenlet.switch, msg)
        self._settle()  # it may have been the last one: the other parked workers may go

    def _admitted(self, msg: TaskResult) -> None:
        """The key table moved ``msg`` from its key's backlog: it is eligible now."""
        lane = self.priority if msg._priority else self.main
        lane.blocked -= 1
        # One that ran before (a retry or a redelivery) goes back to the head of its lane.
        if self._ready(msg, front=msg._attempts > 0) and lane.waiters:
            self.wake_one(lane)

    def _take_gated(self, worker: Worker) -> TaskResult | None:
        held = worker.keyed
        if held is not None:  # done with its last message: its key's slot is free
            worker.keyed = None
            self.keys.release(held)
        while True:
            lane = self.priority if self.priority.items else self.main
            if lane.items and (self.throttle is None or self.throttle.take(self._now())):
                msg: TaskResult = lane.popleft()
                if lane.waiters:
                    self.wake_one(lane)
                if msg._key is not None:
                    worker.keyed = msg
                    self.keys.dispatched(msg)
                self._settle()
                return msg
            if lane.items:
                self._await_token()
            elif self.closing and not len(self):
                return None
            woken = self._park(worker)
            if woken is RETIRE:
                return None
            if woken is not None:
                return woken  # type: ignore[no-any-return]

    def _await_token(self) -> None:
        """Arm the one timer that hands out the global rate's next token."""
        if self._throttle_timer is None and self.throttle is not None:
            self._throttle_timer = self._call_later(self.throttle.wait(self._now()), self._on_token)

    def _on_token(self) -> None:
        self._throttle_timer = None
        throttle = self.throttle
        assert throttle is not None
        while self.idle or self.idle_burst:
            lane = self.priority if self.priority.items else self.main
            if not lane.items:
                return
            if not throttle.take(self._now()):
                self._await_token()
                return
            msg = lane.popleft()
            if lane.waiters:
                self.wake_one(lane)
            self._hand(self.idle.pop() if self.idle else self.idle_burst.pop(), msg)

    def _settle(self) -> None:
        """Closing and nothing left: the parked workers may exit now."""
        if self.closing and not len(self) and (self.idle or self.idle_burst):
            idle, self.idle, self.idle_burst = self.idle + self.idle_burst, [], []
            for worker in idle:
                self._run_callback(worker.greenlet.switch, None)

    def release(self, worker: Worker) -> None:
        """The worker ended (the supervisor reaps it): free its message's key slot."""
        held = worker.keyed
        if held is not None:
            worker.keyed = None
            self.keys.release(held)

    def delay(self, msg: TaskResult, seconds: float) -> None:
        """Keep ``msg`` out of reach for ``seconds``, then put it back at the head of its lane."""
        self.gated = True
        (self.priority if msg._priority else self.main).delayed += 1
        self.delayed[msg] = self._call_later(seconds, self._undelay, msg)

    def _undelay(self, msg: TaskResult) -> None:
        if self.delayed.pop(msg, None) is None:
            return
        lane = self.priority if msg._priority else self.main
        lane.delayed -= 1
        self._put_gated(msg, front=True)
        if lane.waiters and lane.size() < (self.max_size or 0):  # handed straight to a worker: room
            self.wake_one(lane)

    def key_in_flight(self, top: int) -> tuple[tuple[Hashable, int], ...]:
        """The ``top`` keys with the most messages in flight, most first."""
        return self.keys.in_flight(top)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """From now on workers exit when the lanes are empty; wake everyone waiting."""
        self.closing = True
        idle, self.idle, self.idle_burst = self.idle + self.idle_burst, [], []
        for worker in idle:
            self._run_callback(worker.greenlet.switch, None)
        for lane in (self.main, self.priority):
            while lane.waiters:
                self.wake_one(lane)

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
        """Withdraw a waiting message in O(1); False if it is not waiting."""
        lane = self.priority if msg._spec[0] else self.main  # _spec[0]: _priority, without a property call
        extra = msg._spec[4]  # its Extra and key, without the properties' calls
        keyed = extra is not None and extra.key is not None
        if lane.withdraw(msg):
            if keyed:
                self.keys.unqueue(msg)
        elif keyed and self.keys.withdraw(msg):
            lane.blocked -= 1
        elif msg in self.delayed:
            self.delayed.pop(msg).cancel()
            lane.delayed -= 1
        else:
            return False
        if lane.waiters:
            self.wake_one(lane)
        if self.gated:
            self._settle()
        return True

    def drain(self) -> list[TaskResult]:
        """Take every waiting message out, priority first; the room goes to waiting submitters."""
        blocked_priority, blocked_main = self.keys.drain()
        delayed = list(self.delayed)
        for timer in self.delayed.values():
            timer.cancel()
        self.delayed.clear()
        if self._throttle_timer is not None:
            self._throttle_timer.cancel()
            self._throttle_timer = None
        msgs = [*self.priority, *blocked_priority, *(m for m in delayed if m._priority)]
        msgs += [*self.main, *blocked_main, *(m for m in delayed if not m._priority)]
        for lane in (self.priority, self.main):
            lane.clear()
            lane.blocked = lane.delayed = 0
            while lane.waiters:
                self.wake_one(lane)
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
        if lane.size() < max_size or self.closing:
            return
        name = "priority" if priority else "main"
        if not block:
            raise QueueFullError(f"the {name} lane is full ({max_size} messages)")
        waiter = Waiter()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if lane.waiters.withdraw(waiter):  # else: already woken for room, or not waiting right now
                self._run_callback(waiter.switch, None)

        timer = self._call_later(timeout, expire) if timeout is not None else None
        enter = lane.waiters.append
        try:
            while lane.size() >= max_size and not self.closing:
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
        if not lane.waiters.withdraw(waiter):
            # We were woken as we gave up: pass the room on so it is not lost.
            if lane.size() < (self.max_size or 0) and lane.waiters:
                self.wake_one(lane)

    def wake_one(self, lane: Lane) -> None:
        self._run_callback(lane.waiters.popleft().switch, None)
