"""A FIFO with O(1) withdrawal: the keys' backlogs and the submitters waiting for room
in a lane. (The lanes themselves are a leaner :class:`~tasker._mailbox.Lane`: a queued
message knows its lane, so a lane needs no dict.)

The messages are kept in order in a deque and the ones still queued in a dict (a dict
rather than a set: the garbage collector walks its dense entries, not a sparse table
that never shrinks). A withdrawn message leaves the dict at once (so every count is
exact) and stays in the deque as a tombstone that :meth:`Fifo.popleft` skips; when
tombstones outnumber the queued messages the deque is rebuilt without them, so memory
stays proportional to what is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

__all__ = ["Fifo", "Tombstones"]

_COMPACT_MIN = 64  # tombstones a FIFO may hold before it is worth rebuilding
_ABSENT: Any = object()


class Tombstones:
    """Entries in order, with O(1) withdrawal: the part a :class:`Fifo` and a mailbox
    lane (:class:`~tasker._mailbox.Lane`) share.

    A withdrawn entry leaves the deque at once if it is at either end (what a batch's
    cleanup withdraws, oldest first), and otherwise stays behind as a tombstone that
    the takers skip. ``items`` is empty exactly when nothing is queued; when tombstones
    outnumber the queued entries the deque is rebuilt without them, so memory stays
    proportional to what is queued. A subclass says what is queued (:meth:`queued`) and
    forgets an entry before it calls :meth:`withdrawn`.
    """

    __slots__ = ("dead", "items")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()  # queued entries in order, and tombstones
        self.dead = 0  # tombstones in ``items``

    def queued(self, item: Any) -> bool:
        raise NotImplementedError

    def skip(self, item: Any) -> Any:
        """``item`` was just popped and there are tombstones: the first queued entry from
        it on (popped too); the tombstones behind it go if nothing else is left."""
        items = self.items
        while not self.queued(item):
            self.dead -= 1
            item = items.popleft()
        if len(items) == self.dead:
            items.clear()
            self.dead = 0
        return item

    def withdrawn(self, item: Any) -> None:
        """``item`` was queued here and no longer is: out of the deque, or a tombstone."""
        items = self.items
        if items[0] is item:
            items.popleft()
        elif items[-1] is item:
            items.pop()
        else:
            self.dead += 1
        if len(items) == self.dead:  # nothing queued behind the tombstones
            items.clear()
            self.dead = 0
        elif self.dead > _COMPACT_MIN and 2 * self.dead > len(items):
            # Amortized O(1): at least half of what is rebuilt was tombstones.
            self.items = deque(m for m in items if self.queued(m))
            self.dead = 0


class Fifo(Tombstones):
    """Entries in order; ``len`` and iteration see only the ones still queued (the keys
    of a dict: the garbage collector walks its dense entries, not a sparse table)."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[Any, None] = {}  # the entries still queued (as keys)

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[Any]:
        live = self.live
        return (msg for msg in self.items if msg in live)

    def queued(self, item: Any) -> bool:
        return item in self.live

    def append(self, msg: Any) -> None:
        self.live[msg] = None
        self.items.append(msg)

    def appendleft(self, msg: Any) -> None:
        self.live[msg] = None
        self.items.appendleft(msg)

    def popleft(self) -> Any:
        """The oldest queued entry, removed; the FIFO must not be empty."""
        msg = self.items.popleft()
        if self.dead:  # withdrawn entries may come first: skip them
            msg = self.skip(msg)
        del self.live[msg]
        return msg

    def withdraw(self, msg: Any) -> bool:
        """Take ``msg`` out (see :class:`Tombstones`); False if it is not queued here."""
        if self.live.pop(msg, _ABSENT) is _ABSENT:
            return False
        self.withdrawn(msg)
        return True

    def clear(self) -> None:
        self.items.clear()
        self.live.clear()
        self.dead = 0
