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

__all__ = ["Fifo"]

_COMPACT_MIN = 64  # tombstones a FIFO (or a lane) may hold before it is worth rebuilding
_ABSENT: Any = object()


class Fifo:
    """Messages in order; ``len`` and iteration see only the ones still queued."""

    __slots__ = ("dead", "items", "live")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()  # queued messages in order, and tombstones
        self.live: dict[Any, None] = {}  # the messages still queued (as keys)
        self.dead = 0  # tombstones in ``items``: withdrawn messages not yet skipped

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[Any]:
        live = self.live
        return (msg for msg in self.items if msg in live)

    def append(self, msg: Any) -> None:
        self.live[msg] = None
        self.items.append(msg)

    def appendleft(self, msg: Any) -> None:
        self.live[msg] = None
        self.items.appendleft(msg)

    def popleft(self) -> Any:
        """The oldest queued message, removed; the FIFO must not be empty."""
        live = self.live
        msg = self.items.popleft()
        if self.dead:  # withdrawn messages may come first: skip them
            while msg not in live:
                self.dead -= 1
                msg = self.items.popleft()
        del live[msg]
        return msg

    def withdraw(self, msg: Any) -> bool:
        """Leave ``msg`` behind as a tombstone; False if it is not queued here.

        The oldest message (what a batch's cleanup withdraws, oldest first) or the
        newest simply leaves the deque: no tombstone, nothing to rebuild later.
        """
        live = self.live
        if live.pop(msg, _ABSENT) is _ABSENT:
            return False
        items = self.items
        if items[0] is msg:
            items.popleft()
        elif items[-1] is msg:
            items.pop()
        else:
            self.dead += 1
            if live and self.dead > _COMPACT_MIN and self.dead > len(live):
                # Amortized O(1): at least half of what is rebuilt was tombstones.
                self.items = deque(m for m in items if m in live)
                self.dead = 0
        if not live:
            items.clear()
            self.dead = 0
        return True

    def clear(self) -> None:
        self.items.clear()
        self.live.clear()
        self.dead = 0
