"""The supervisor actor: reaps every worker that ends and decides what follows.

Every worker greenlet is linked to the supervisor's inbox. For each one that ends it:

- **unhealthy**: starts a replacement and redelivers the message at the front of its
  lane while it may be retried (not at-most-once, fewer than ``max_retries``
  redeliveries); otherwise answers the caller — ``RetriesExhaustedError`` after a
  redelivery, the task's own exception if it was never redelivered;
- **broken** (a task raised a BaseException of its own) or **crashed**: replaces it;
- **create_failed**: its ``on_create`` raised. Restarts back off exponentially (0.05 s
  doubling to 2 s, on the manager's clock) and are logged once per streak. When no
  worker is alive, every queued message fails with ``ResourceCreationError``; new ones
  wait for the next try, so no caller waits longer than the backoff cap.

Replacements of base workers are base workers; a failed burst worker is not replaced
(the scaler starts another when the load still calls for it, once the backoff allows).
During a graceful stop a worker is replaced only while messages remain queued, and the
supervisor sets ``drained`` when the last worker is gone and the lanes are empty.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import SimpleQueue

from ._clock import TimerHandle
from ._core import NO_RESOURCE, Core
from ._errors import ResourceCreationError, RetriesExhaustedError, TaskKilledError
from ._worker import Exit, Worker

__all__ = ["BACKOFF_CAP", "BACKOFF_FIRST", "Supervisor"]

BACKOFF_FIRST = 0.05  # seconds before the first retry of a failed on_create
BACKOFF_CAP = 2.0  # seconds: the longest wait between two tries

_RESTART: Any = object()  # inbox token: time to try the missing base workers again


class Supervisor:
    """Owns the set of workers: starts, reaps and replaces them."""

    def __init__(self, core: Core, base_count: int) -> None:
        self._core = core
        self.base_count = base_count  # the base workers it keeps
        self._inbox: SimpleQueue[Any] = SimpleQueue()
        self.workers: dict[gevent.Greenlet, Worker] = {}
        self.drained = Event()
        self._missing_base = 0  # base workers to start once the backoff allows
        self.starting = 0  # workers still creating their resource
        self._streak = 0  # consecutive on_create failures
        self._next_start = 0.0  # no worker is started before this time
        self._timer: TimerHandle | None = None
        self._closed = False
        self.greenlet = gevent.Greenlet(self._run)

    def start_worker(self, burst: bool, resource: Any = NO_RESOURCE) -> Worker:
        """Start a worker; it creates its own resource unless one is given."""
        worker = Worker(self._core, self.started, burst, resource)
        if resource is NO_RESOURCE:
            worker.starting = True
            self.starting += 1
        self.workers[worker.greenlet] = worker
        worker.greenlet.rawlink(self._inbox.put)
        worker.greenlet.start()
        return worker

    @property
    def pending_restarts(self) -> int:
        """Base workers waiting for the backoff to allow their restart."""
        return self._missing_base

    def may_start(self) -> bool:
        """Whether the restart backoff allows starting a worker now."""
        return self._core.now() >= self._next_start

    def started(self, worker: Worker) -> None:
        """Called by a worker whose resource was created: the streak, if any, is over."""
        worker.starting = False
        self.starting -= 1
        if self._streak:
            self._core.log("info", "tasker: on_create works again after %d failures", self._streak)
            self._streak = 0
            self._next_start = 0.0

    def poke(self) -> None:
        """Ask the supervisor to look at the manager's state again (stop, kill)."""
        self._inbox.put(None)

    def _run(self) -> None:
        get = self._inbox.get
        while not self._closed:  # closed by kill() from a hook or the logger this greenlet ran
            try:
                item = get()
            except BaseException as exc:  # a timer user code left behind (the logger's)
                self._core.survive(exc)
                self._core.log("error", "tasker: the supervisor was interrupted by %r; going on", exc)
                continue
            if item is _RESTART:
                self._timer = None
                self._restart_missing()
            elif item is not None:
                try:
                    self._reap(item)
                except BaseException as exc:  # a bug here must not strand every caller
                    self._core.survive(exc)
                    self._core.log("error", "tasker: supervisor failed to reap a worker: %r", exc)
            self._check_drained()

    def _reap(self, greenlet: gevent.Greenlet) -> None:
        worker = self.workers.pop(greenlet, None)
        if worker is None:
            return
        if worker.starting:  # it ended in on_create
            worker.starting = False
            self.starting -= 1
        core = self._core
        outcome = greenlet.value if greenlet.successful() else None
        if not isinstance(outcome, Exit):
            outcome = Exit("crashed", greenlet.exception)
        if outcome.reason == "unhealthy":
            self._redeliver_or_answer(worker, outcome)  # first: a replacement is for queued work
            self._replace(worker)
        elif outcome.reason == "create_failed":
            assert outcome.error is not None
            self._create_failed(worker, outcome.error)
        elif outcome.reason != "idle":
            msg, worker.current = worker.current, None
            if msg is None or msg.ready():  # none, or answered since (cancelled on its way): let go
                pass
            elif worker.died_parked and not core.killing:
                # Handed to the worker as it died parked: it never ran there, so it goes
                # back to the front of its lane (not a retry: no attempt was used).
                core.mailbox.put(msg, front=True)
            else:  # it crashed while a message was assigned to it
                core.finish(msg, TaskKilledError(f"worker crashed: {outcome.error!r}"))
            worker.release()  # killed before it first ran, it still holds the resource it was given
            self._replace(worker)
        # Only now is its key slot free: a message put back above went to the head of its
        # key's backlog, so it takes the slot before the messages of its key that came later.
        core.mailbox.release(worker)
        if outcome.reason in ("unhealthy", "broken", "crashed"):
            core.log("warning", "tasker: retired a worker after %r", outcome.error)

    def _replace(self, worker: Worker) -> None:
        if worker.burst or self._core.killing:
            return
        if self._core.mailbox.closing and not self._core.mailbox:
            return
        if self.may_start():
            self.start_worker(burst=False)
        else:
            self._missing_base += 1
            self._schedule_restart()

    def _redeliver_or_answer(self, worker: Worker, outcome: Exit) -> None:
        core = self._core
        msg = outcome.message
        exc = outcome.error
        assert msg is not None and exc is not None
        worker.current = None
        if msg.ready():  # timed out or cancelled while it ran
            return
        redeliveries = msg._attempts - 1 - msg.retries  # transient retries are not redeliveries
        if not msg._once and redeliveries < core.max_retries:
            core.redeliver(msg)
        elif redeliveries:
            core.finish(msg, RetriesExhaustedError(msg._attempts, exc))
            core.log("warning", "tasker: task failed after %d attempts: %r", msg._attempts, exc)
        else:
            core.finish(msg, exc)

    def _create_failed(self, worker: Worker, exc: BaseException) -> None:
        core = self._core
        self._streak += 1
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (self._streak - 1))
        self._next_start = core.now() + delay
        if self._streak == 1:
            core.log("warning", "tasker: on_create failed, retrying with backoff: %r", exc)
        if not worker.burst:
            self._missing_base += 1
            self._schedule_restart()
        if not self.workers:  # none alive, none on its way: nobody will serve the queue
            for msg in core.mailbox.drain():
                error = ResourceCreationError(f"no worker could be started: on_create raised {exc!r}")
                error.__cause__ = exc  # one error per caller: each raise grows its own traceback
                core.finish(msg, error)

    def _schedule_restart(self) -> None:
        if self._timer is None and not self._closed:  # closed by a kill() from the logger just now
            delay = max(0.0, self._next_start - self._core.now())
            self._timer = self._core.clock.call_later(delay, self._inbox.put, _RESTART)

    def _restart_missing(self) -> None:
        core = self._core
        if core.killing or (core.mailbox.closing and not core.mailbox):
            self._missing_base = 0
            return
        missing, self._missing_base = self._missing_base, 0
        for _ in range(missing):
            self.start_worker(burst=False)

    def _check_drained(self) -> None:
        core = self._core
        if not core.mailbox.closing or self.drained.is_set():
            return
        if not self.workers and not core.mailbox:
            self.drained.set()
            core.progressed()
        elif not self.workers and self._timer is None and self._missing_base == 0:
            # Messages remain and no worker will come: start one to drain them.
            self._missing_base = 1
            self._schedule_restart()

    def close(self) -> None:
        """Cancel a pending restart and leave the loop; the manager kills the greenlet."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
