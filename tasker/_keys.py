"""Keyed dispatch: per-key concurrency limits and rate limits, without head-of-line blocking.

A submission may carry a *key* (a host, a tenant, an API). Each key has a concurrency
limit (``Config.key_concurrency``, overridable per key) and optionally a token-bucket
rate (``Config.key_rate``). The mailbox's lanes then hold only *eligible* messages: a
keyed message enters its lane only once it holds one of its key's slots (and, for a
rate-limited key, a token), so a worker that takes the head of a lane can always run it
and never skips over blocked messages. A message whose key is full waits in its key's
own backlog, in place: it blocks nothing of another key.

Per key, :class:`KeyTable` keeps a small record: ``held`` (messages holding a slot:
eligible in a lane, handed to a worker, or running), ``queued`` (of those, the ones
still in a lane), the backlog (a priority and a main FIFO, made on first use), the
bucket and one timer. Every operation touches one key's record and moves at most one
message per slot or token that became free, so a dispatch costs O(1) amortized however
many keys exist. A key whose record holds nothing (no message held or waiting, its
bucket full again) is deleted: idle keys cost no memory. A bucket that is not full yet
keeps its record until it is (one timer), so forgetting a key never grants a fresh burst
early.

A rate-limited key keeps at most one message in its lane at a time: its token is taken
when it enters the lane, and the next one only enters when that one leaves for a worker.
So a backlog of eligible messages waiting for a busy pool cannot start as one big burst.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import attrs

from ._clock import Clock, TimerHandle
from ._fifo import Fifo
from ._ratelimit import RateLimit, TokenBucket

__all__ = ["KeyLimits", "KeyTable"]


def _optional_limit(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"KeyLimits.concurrency must be an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"KeyLimits.concurrency must be >= 1, got {value!r}")


def _optional_rate(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, RateLimit):
        raise TypeError(f"KeyLimits.rate must be a tasker.RateLimit or None, got {value!r}")


@attrs.frozen
class KeyLimits:
    """The limits of one key, overriding the ``Config`` defaults (``Config.key_limits``).

    A field left None takes the default (``Config.key_concurrency``, ``Config.key_rate``).
    """

    concurrency: int | None = attrs.field(default=None, validator=_optional_limit)
    """Messages of this key in flight at once."""
    rate: RateLimit | None = attrs.field(default=None, validator=_optional_rate)
    """Token bucket of this key's dispatches."""


class _Key:
    __slots__ = ("bucket", "held", "limit", "main", "name", "priority", "queued", "refilling", "timer")

    def __init__(self, name: Hashable, limit: int | None, bucket: TokenBucket | None) -> None:
        self.name = name
        self.limit = limit
        self.bucket = bucket
        self.held = 0  # messages holding a slot: in a lane, handed to a worker, or running
        self.queued = 0  # of those, the ones still in a lane
        self.priority: Fifo | None = None  # waiting for a slot or a token, made on first use
        self.main: Fifo | None = None
        self.timer: TimerHandle | None = None  # a token is due, or the bucket is full again
        self.refilling = False  # the timer is the latter: a token timer replaces it

    def room(self) -> bool:
        return self.limit is None or self.held < self.limit

    def waiting(self) -> Fifo | None:
        """The backlog to serve next (priority first), or None when nothing waits."""
        if self.priority:
            return self.priority
        return self.main or None


class KeyTable:
    """The per-key records and the admission rule; see the module doc.

    Args:
        limit: default concurrency per key (None: unlimited).
        rate: default rate per key (None: unlimited).
        overrides: per-key :class:`KeyLimits`.
        clock: the manager's clock, for buckets and timers.
        admit: called with a message that just got its slot (and token) from a backlog;
            the mailbox puts it in its lane or hands it to a worker.
    """

    __slots__ = ("_admit_to_lane", "_admitting", "_call_later", "_keys", "_limit", "_now", "_overrides", "_rate")

    def __init__(
        self,
        limit: int | None,
        rate: RateLimit | None,
        overrides: Mapping[Hashable, KeyLimits],
        clock: Clock,
        admit: Callable[[Any], object],
    ) -> None:
        self._limit = limit
        self._rate = rate
        self._overrides = dict(overrides)
        self._now = clock.now
        self._call_later = clock.call_later
        self._admit_to_lane = admit
        self._keys: dict[Hashable, _Key] = {}
        self._admitting: _Key | None = None  # the key whose backlog is being admitted

    def __len__(self) -> int:
        """Keys with a record (something held or waiting, or a bucket refilling)."""
        return len(self._keys)

    def _record(self, name: Hashable) -> _Key:
        key = self._keys.get(name)
        if key is None:
            limit, rate = self._limit, self._rate
            override = self._overrides.get(name)
            if override is not None:
                limit = override.concurrency if override.concurrency is not None else limit
                rate = override.rate if override.rate is not None else rate
            key = self._keys[name] = _Key(name, limit, None if rate is None else TokenBucket(rate, self._now()))
        return key

    def arrive(self, msg: Any, front: bool = False) -> bool:
        """A message of a key arrives (``front``: a retry or redelivery, ahead of its backlog).

        Returns True when it took a slot (and token) and may enter its lane now; False
        when it waits in its key's backlog, to be passed to ``admit`` later.
        """
        key = self._record(msg._key)
        bucket = key.bucket
        if key.waiting() is None and key.room() and (bucket is None or (not key.queued and bucket.take(self._now()))):
            key.held += 1
            key.queued += 1
            return True
        if msg._priority:
            fifo = key.priority = key.priority or Fifo()
        else:
            fifo = key.main = key.main or Fifo()
        if front:
            fifo.appendleft(msg)
        else:
            fifo.append(msg)
        if bucket is not None and key.room() and not key.queued:
            self._wait_for_token(key, bucket)
        return False

    def dispatched(self, msg: Any) -> None:
        """A message that held a slot left its lane for a worker."""
        key = self._keys.get(msg._key)
        if key is None:  # drained (kill): nothing to account for any more
            return
        key.queued -= 1
        if key.bucket is not None and key is not self._admitting:
            self._admit(key)  # its lane may take the key's next message now

    def release(self, msg: Any) -> None:
        """A worker is done with a message that held a slot: the slot is free."""
        key = self._keys.get(msg._key)
        if key is None:
            return
        key.held -= 1
        self._admit(key)

    def unqueue(self, msg: Any) -> None:
        """A message that held a slot was withdrawn from its lane before it ran."""
        key = self._keys.get(msg._key)
        if key is None:
            return
        key.held -= 1
        key.queued -= 1
        self._admit(key)

    def withdraw(self, msg: Any) -> bool:
        """Withdraw a message from its key's backlog in O(1); False if it is not there."""
        key = self._keys.get(msg._key)
        if key is None:
            return False
        fifo = key.priority if msg._priority else key.main
        if fifo is None or not fifo.withdraw(msg):
            return False
        self._admit(key)  # drops the emptied backlog, forgets an idle key
        return True

    def drain(self) -> tuple[list[Any], list[Any]]:
        """Take every waiting message out (priority ones, main ones); forget every key."""
        priority: list[Any] = []
        main: list[Any] = []
        for key in self._keys.values():
            if key.timer is not None:
                key.timer.cancel()
            if key.priority:
                priority.extend(key.priority)
            if key.main:
                main.extend(key.main)
        self._keys.clear()
        return priority, main

    def in_flight(self, top: int) -> tuple[tuple[Hashable, int], ...]:
        """The ``top`` keys with the most messages handed to workers, most first."""
        counts = ((key.held - key.queued, key.name) for key in self._keys.values() if key.held > key.queued)
        return tuple((name, count) for count, name in heapq.nlargest(top, counts, key=lambda c: c[0]))

    def _tick(self, key: _Key) -> None:
        key.timer = None
        key.refilling = False
        if self._keys.get(key.name) is key:
            self._admit(key)

    def _admit(self, key: _Key) -> None:
        """Move backlog messages into their lanes while the key has slots and tokens."""
        bucket = key.bucket
        while key.room():
            fifo = key.waiting()
            if fifo is None:
                break
            if bucket is not None:
                if key.queued:
                    break  # one at a time in a lane: its dispatch admits the next
                if not bucket.take(self._now()):
                    self._wait_for_token(key, bucket)
                    break
            msg = fifo.popleft()
            key.held += 1
            key.queued += 1
            self._admitting = key
            try:
                self._admit_to_lane(msg)
            finally:
                self._admitting = None
        if key.priority is not None and not key.priority:
            key.priority = None
        if key.main is not None and not key.main:
            key.main = None
        if key.held or key.priority is not None or key.main is not None or key.timer is not None:
            return
        if bucket is not None:
            refill = bucket.full_in(self._now())
            if refill > 0:  # forgetting it now would grant a fresh burst too early
                key.timer = self._call_later(refill, self._tick, key)
                key.refilling = True
                return
        del self._keys[key.name]

    def _wait_for_token(self, key: _Key, bucket: TokenBucket) -> None:
        """Arm the key's timer for its next token (a single timer per key)."""
        if key.timer is not None:
            if not key.refilling:
                return  # already armed for the next token
            key.timer.cancel()
        key.refilling = False
        key.timer = self._call_later(bucket.wait(self._now()), self._tick, key)
