"""The worker actor: one greenlet that owns one resource and runs one task at a time.

The worker creates its resource (unless the manager handed it one made up front), takes
messages from the mailbox — priority lane first — runs each task in its own greenlet
(no greenlet per task), resolves the reply, and destroys its resource when it exits.
Its loop is the hot path: while the mailbox is ungated it pops a lane's head itself
(``Lane.popleft``, inline), and it answers a success itself (``Core.finish`` answers
everything else, behind the same ``ready()`` check).
A task's :class:`Context` goes on to the worker's next task when nothing kept a
reference to it and it was not cancelled (``sys.getrefcount``): no task can tell it
from a fresh one, and the hot path saves an allocation.
It exits, returning an :class:`Exit` for the supervisor to read, when:

- the manager is closing and the lanes are empty, or the scaler retired it (``IDLE``);
- a task failed unhealthily (``UNHEALTHY``, with the message and the exception; the
  message stays ``current`` until the supervisor has redelivered or answered it);
- a task raised a BaseException of its own (``BROKEN``; the caller already has a reply);
- its resource could not be created (``CREATE_FAILED``).
"""

from __future__ import annotations

from collections.abc import Callable
from sys import getrefcount
from typing import Any

import attrs
import gevent

from ._context import UNSHARED, Context
from ._core import NO_RESOURCE, Core
from ._errors import CancelledError, TaskKilledError, TaskTimeoutError
from ._message import Interrupt, TaskResult, spent
from ._types import TaskLifecycleTimestamps

__all__ = ["Exit", "Worker"]


@attrs.frozen
class Exit:
    """Why a worker's greenlet ended: its return value."""

    reason: str  # "idle" | "unhealthy" | "broken" | "create_failed"
    error: BaseException | None = None
    message: TaskResult | None = None


IDLE = Exit("idle")


class Worker:
    """One worker actor; ``greenlet`` runs :meth:`_main`."""

    __slots__ = (
        "burst",
        "core",
        "current",
        "destroying",
        "died_parked",
        "greenlet",
        "idle_since",
        "in_task",
        "keyed",
        "resource",
        "started_hook",
        "starting",
    )

    def __init__(
        self, core: Core, started: Callable[[Worker], None], burst: bool, resource: Any = NO_RESOURCE
    ) -> None:
        self.core = core
        self.started_hook = started  # the supervisor's: called once the resource exists
        self.burst = burst
        self.resource = resource
        self.current: TaskResult | None = None  # assigned message, until it is answered
        self.in_task = False  # True only while the task's own code runs
        self.idle_since = 0.0
        self.starting = False  # counted in Supervisor.starting until its resource exists
        self.died_parked = False  # an exception reached it while parked in the mailbox
        self.destroying = False  # inside on_destroy: kill() waits for it, never interrupts it
        self.keyed: TaskResult | None = None  # a keyed message whose key slot it holds (the mailbox's)
        self.greenlet = gevent.Greenlet(self._main)

    @property
    def started(self) -> bool:
        """Whether it holds a resource (and so can run tasks)."""
        return self.resource is not NO_RESOURCE

    def _main(self) -> Exit:
        created = self.resource is NO_RESOURCE
        if created:
            try:
                self.resource = self.core.on_create()
            except (KeyboardInterrupt, SystemExit):
                raise  # gevent's meaning: they go to the main greenlet
            except BaseException as exc:  # gevent.Timeout, GreenletExit, ...: all get the backoff
                return Exit("create_failed", exc)
        try:
            if created:  # it logs, and the logger may yield: a kill() landing there still destroys
                self.started_hook(self)
            return self._loop()
        finally:
            self.release()

    def release(self) -> None:
        """Destroy the resource unless that was done already (by this worker, or by kill()
        for a worker that was killed before its greenlet ever ran)."""
        resource, self.resource = self.resource, NO_RESOURCE
        if resource is not NO_RESOURCE:
            self.destroying = True
            self.core.destroy(resource)

    def _loop(self) -> Exit:
        core = self.core
        mailbox = core.mailbox
        priority, main = mailbox.priority, mailbox.main
        take = mailbox.take
        now = core.now
        fast = core.fast  # the default collector, fed directly (its three buffers), or None
        waits, runs, finishes = ([], [], []) if fast is None else fast.pending_completions
        fold_at = core.fold_every
        resource = self.resource
        ctx: Context | None = None  # the next task's context: a fresh one, or the last one, unshared
        msg: TaskResult | None
        fn: Callable[[Context, Any], Any] | None = None
        value: Any = None
        while True:
            # Mailbox.take's fast path, inline (ungated, a message queued): Lane.popleft.
            lane = priority if priority.items else main
            if lane.items and not mailbox.gated:
                msg = lane.items.popleft()
                if lane.dead:  # withdrawn messages may come first
                    msg = lane.skip(msg)
                msg._lane = None
                if lane.waiters.live:  # submitters waiting for room (the dict: no Python-level __len__)
                    mailbox.wake_one(lane)
            else:
                msg = fn = value = None  # parked, it holds nothing of its last task
                msg = take(self)
                if msg is None:
                    return IDLE
                if msg.ready():  # handed over, then cancelled or killed on its way here
                    self.current = None
                    continue
            self.current = msg
            msg._attempts += 1
            msg._started_at = started = now()
            if ctx is None:
                ctx = Context(core.ctx)
            msg._ctx = ctx
            timer = None
            timeout = msg._spec[2]
            if timeout is not None:
                timer = core.clock.call_later(timeout, core.time_out, self, msg)
            fn = msg._fn  # not msg._fn(...): calling a slot as a method is a slow lookup
            self.in_task = True
            try:
                value = fn(ctx, resource)
            except BaseException as exc:
                self.in_task = False  # before any user hook runs: no interrupt may land there
                try:
                    outcome = self._ended(msg, exc)
                finally:  # only now: a slow check_health or retry policy still answers by the deadline
                    if timer is not None:
                        timer.cancel()
                if outcome is not None:
                    return outcome
                ctx = None  # it stays with its message (a cancel() asks it why it failed)
                continue
            self.in_task = False
            if timer is not None:
                timer.cancel()
            self.current = None
            if not msg.ready():  # else a timeout or kill() answered it while it ran
                # A success is resolved here, the only place that does (Core.finish resolves the rest).
                core.done += 1
                msg.set(value)
                msg._ctx = None  # nothing needs the task's context, nor the task, once its reply is set
                msg._fn = spent
                if fast is None:
                    core.record(TaskLifecycleTimestamps(msg._queued_at, started, now()), False, False)
                else:
                    finished = now()
                    waits.append(started - msg._queued_at)
                    runs.append(finished - started)
                    finishes.append(finished)
                    if len(finishes) >= fold_at:
                        fast.fold()
            # The reply no longer holds the context: if nothing else does and it was not
            # cancelled, it is as good as new, and the next task gets it.
            if ctx._cancelled or getrefcount(ctx) > UNSHARED:
                ctx = None

    def _ended(self, msg: TaskResult, exc: BaseException) -> Exit | None:
        if isinstance(exc, Interrupt):  # timed out: the reply is already resolved
            return self._failed(msg, exc.error)
        if isinstance(exc, Exception):
            return self._failed(msg, exc)
        return self._broken(msg, exc)

    def _failed(self, msg: TaskResult, exc: BaseException) -> Exit | None:
        core = self.core
        # While kill() runs nothing is redelivered: the caller gets the task's own error.
        if core.killing or core.healthy(exc):
            # A task that gave up because its context was cancelled was cancelled, not failed.
            cancelled = isinstance(exc, CancelledError) and msg._ctx is not None and msg._ctx.cancelled
            # Still ``current`` while the retry policy's user code runs: a kill() then answers it.
            retried = not cancelled and core.retry_later(msg, exc)
            self.current = None
            if not retried:
                core.finish(msg, exc, cancelled=cancelled)
            return None
        return Exit("unhealthy", exc, msg)

    def _broken(self, msg: TaskResult, exc: BaseException) -> Exit:
        """A BaseException that is not an Exception: answer the caller, then leave for good.

        kill()'s own ``GreenletExit`` answers ``TaskKilledError`` as a cancellation, as
        kill() does for the tasks it interrupts; one the task raised itself is a failure.
        """
        core = self.core
        cancelled = core.ours(exc)  # kill() ended this worker mid-task: a cancellation, not a failure
        if cancelled:
            error: BaseException = TaskKilledError("interrupted by kill()")
        elif isinstance(exc, gevent.Timeout):
            error = TaskTimeoutError(f"task raised its own {exc!r}")
        else:
            error = TaskKilledError(f"task raised {exc!r}")
        error.__cause__ = exc
        self.current = None
        core.finish(msg, error, cancelled=cancelled)
        if core.killing or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc  # kill() is ending us; or gevent's meaning: it goes to the main greenlet
        return Exit("broken", exc)
