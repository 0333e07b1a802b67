"""The core the actors share: what a worker, the supervisor, the scaler and the pool may use.

``TaskManager`` (the façade, ``_manager``) builds one :class:`Core` and hands it to each
actor and to the lifecycle (``_shutdown``); neither the actors nor the core see those two.
The core holds:

- the user's hooks (``on_create``, ``destroy`` for ``on_destroy``, ``healthy`` for
  ``check_health``), the logger and the collector, each called so that nothing it
  raises ends an actor (:meth:`Core.survive`);
- the clock, the mailbox, the manager's root context;
- :meth:`Core.finish`, which answers a reply with an error: once, and recorded once
  (a worker answers a success itself, with the same check), so every submission gets
  exactly one answer however kill, timeouts, cancels and workers race;
- the paths a message takes back: :meth:`Core.redeliver` and :meth:`Core.cancel`, a
  run's timeout (:meth:`Core.time_out`), and a transient retry after a backoff
  (:meth:`Core.retry_later`, by the ``RetryPolicy``);
- the lifecycle flags the actors read (``accepting``, ``killing``, ``tearing_down``),
  which only ``_shutdown`` sets.

Dependencies run one way: façade → lifecycle (``_shutdown``) → actors (``_supervisor``,
``_scaler``, ``_worker``, ``_pool``) → core → values (``_message``, ``_context``, ``_types``, ``_errors``,
``_clock``, ``_mailbox``).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from greenlet import getcurrent

from ._clock import Clock
from ._context import Context
from ._errors import CancelledError, ManagerStoppedError, RetriesExhaustedError, TaskKilledError, TaskTimeoutError
from ._mailbox import Mailbox
from ._message import Extra, Interrupt, TaskResult, spent
from ._metrics import FOLD_EVERY, Collector
from ._retry import RetryPolicy
from ._threads import call_in_hub, get_ident
from ._types import Logger, MetricsCollector, TaskLifecycleTimestamps

__all__ = ["NO_RESOURCE", "Core"]

NO_RESOURCE: Any = object()  # a resource may legitimately be None
# A cancel's error shares one args tuple: an exception keeps the tuple it was called with,
# so this saves an allocation (and the garbage collector a visit) per cancel.
_BEFORE_IT_RAN = ("cancelled before it ran",)


def _nothing() -> None:
    pass


def thrown_in(exc: BaseException) -> bool:
    """Whether ``exc`` is an interrupt that landed while the code it ended was blocked.

    gevent throws a ``Timeout`` (from its timer), a ``GreenletExit`` (``kill()``) or any
    exception given to ``throw()`` into a greenlet where it switched to the hub, so its
    traceback ends in gevent's switch. An exception the code raised itself ends in that
    code. (A ``Timeout`` the code armed itself and let escape also ends in the switch:
    the two cannot be told apart, and it is treated as thrown in.)
    """
    if isinstance(exc, Exception):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return "greenlet_primitives" in tb.tb_frame.f_code.co_filename  # gevent's switch, compiled or not


_cores: weakref.WeakSet[Core] = weakref.WeakSet()  # every manager's core in this process


def _after_fork_in_child() -> None:
    """A forked child holds copies of its parent's managers, their resources (the same
    sockets) and their actors: there they refuse all work (:meth:`Core.check_process`)."""
    for core in list(_cores):
        core.accepting = False


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Core:
    """State and operations shared by the actors of one manager."""

    def __init__(
        self,
        *,
        on_create: Callable[[], Any],
        on_destroy: Callable[[Any], object] | None,
        check_health: Callable[[BaseException], bool] | None,
        max_retries: int,
        clock: Clock,
        mailbox: Mailbox,
        retry: RetryPolicy | None = None,
        logger: Logger,
        collector: MetricsCollector,
        parent: Context | None,
    ) -> None:
        self.on_create = on_create
        self._on_destroy = on_destroy
        self._check_health = check_health
        self.max_retries = max_retries
        self.clock = clock
        self.now = clock.now
        self.mailbox = mailbox
        self.retry = retry  # Config.retry: the default policy of transient retries
        self._logger = logger
        self.collector = collector
        self._record_cancellation = getattr(collector, "record_cancellation", None)  # optional
        self._record_transient_retry = getattr(collector, "record_transient_retry", None)  # optional
        # The default collector on the manager's own clock is fed directly: an arrival
        # appends the submission's clock reading to its buffer, a worker's success its
        # wait, run and finish times to three (Worker._loop).
        # A collector of any other type (a subclass too) gets every record through its
        # methods, at once.
        self.fast: Collector | None = None
        self.pending_arrivals: list[float] | None = None  # the fast collector's arrivals buffer
        self.fold_every = FOLD_EVERY  # records buffered before a fold
        # The default collector only counts failures and cancellations: they are added to
        # its counters directly, whatever its clock (no stamps, no call).
        self.counts: Collector | None = collector if type(collector) is Collector else None
        if type(collector) is Collector and collector.clock_now == clock.now:
            self.fast = collector
            self.pending_arrivals = collector.pending_arrivals
        self.parent = parent
        self.ctx = parent.child() if parent is not None else Context()
        self.hub = gevent.get_hub()
        self.thread = get_ident()  # calls from other threads are handed to this one
        self.pid = os.getpid()  # a forked child's copy refuses all work
        _cores.add(self)
        self.accepting = True
        self.killing = False
        self.tearing_down = False
        self.arrived = 0  # accepted submissions (the scaler's own counters)
        self.done = 0  # resolved replies
        self.ending: set[Any] = set()  # greenlets shutdown has killed: their GreenletExit is ours
        self.progressed: Callable[[], None] = _nothing  # _shutdown's: something shutdown waits for ended

    # -- replies -------------------------------------------------------------------------

    def finish(self, msg: TaskResult, exc: BaseException, cancelled: bool = False) -> None:
        """Answer ``msg`` with ``exc`` unless it is answered already, and record it.

        Every reply but a success is resolved here; a worker resolves a success itself
        (the hot path, :meth:`Worker._loop <tasker._worker.Worker._loop>`). Both check
        ``ready()`` first, so a reply is resolved once however kill, timeouts, cancels
        and workers race. ``cancelled``: the task was withdrawn (``cancel()``, a
        cancelled context, ``kill()``), which the metrics count apart from failures.
        """
        if msg.ready():
            return
        self.done += 1
        msg.set_exception(exc)
        msg._fn = spent  # a worker still running it holds its own reference
        counts = self.counts
        if counts is not None:
            if cancelled:
                counts._cancelled += 1
            else:
                counts._failed += 1
            return
        now = self.now()
        started = msg._started_at
        self.record(TaskLifecycleTimestamps(msg._queued_at, now if started is None else started, now), True, cancelled)

    def record(self, stamps: TaskLifecycleTimestamps, failed: bool, cancelled: bool, caller: bool = False) -> None:
        """Tell the collector how one task ended (a queued task or a ``run_task`` call).

        ``caller``: this runs in the caller's own greenlet (``run_task``), so what was
        thrown into it while the collector blocked goes on to it (see :meth:`record_arrival`).
        """
        try:
            if not failed:
                self.collector.record_completion(stamps)
            elif not cancelled:
                self.collector.record_failure(stamps)
            elif self._record_cancellation is not None:
                self._record_cancellation(stamps)
        except BaseException as error:
            if caller and thrown_in(error):
                raise
            self.survive(error)
            self.log("error", "tasker: the collector raised %r", error)

    def record_arrival(self, msg: TaskResult | None = None) -> None:
        """Tell the collector of an arrival, in the caller's own greenlet (``submit``, ``run_task``).

        What the collector raises itself is logged, whatever its kind. What was thrown
        into the caller's greenlet while the collector blocked (:func:`thrown_in`: the
        caller's own ``gevent.Timeout``, a ``greenlet.kill()`` of the caller, kill()'s
        interrupt of a ``run_task``) goes on to the caller, as it would have without
        tasker in between, and so do ``KeyboardInterrupt`` and ``SystemExit``. ``msg``,
        submit's message (queued already), is then first withdrawn as by its
        ``cancel()``, so no reply is left that nobody holds.
        """
        try:
            self.collector.record_arrival()
        except BaseException as exc:
            if not (thrown_in(exc) or isinstance(exc, (KeyboardInterrupt, SystemExit))):
                self.survive(exc)
                self.log("error", "tasker: collector.record_arrival raised %r", exc)
                return
            if msg is not None:
                self.cancel(msg)
            raise

    def check_accepting(self) -> None:
        """Raise ``ManagerStoppedError`` unless new work is accepted."""
        if not self.accepting:
            self.check_process()
            raise ManagerStoppedError("the manager is stopped; no new tasks are accepted")
        if self.parent is not None and self.parent.cancelled:  # before the watcher has run
            raise ManagerStoppedError("the manager's parent context is cancelled; no new tasks are accepted")

    def check_process(self) -> None:
        """Raise ``ManagerStoppedError`` in a process forked after the manager was made."""
        if self.pid != os.getpid():
            raise ManagerStoppedError(
                f"this TaskManager was made in process {self.pid}, which forked this one: its resources "
                "and actors are the parent's; make the child's own manager after the fork"
            )

    # -- the ways a message goes back ----------------------------------------------------

    def redeliver(self, msg: TaskResult) -> None:
        """Put a message that failed unhealthily back at the front of its lane."""
        if self.killing:  # the queue was drained already: nothing would take it
            self.finish(msg, TaskKilledError("dropped by kill() before its redelivery"), cancelled=True)
            return
        if msg._ctx is not None and msg._ctx._cancelled:
            self.finish(msg, CancelledError("cancelled while it ran"), cancelled=True)
            return
        msg._ctx = None
        self.mailbox.put(msg, front=True)  # before the collector runs: nothing it raises can lose it
        try:
            self.collector.record_retry()
        except BaseException as error:
            self.survive(error)
            self.log("error", "tasker: collector.record_retry raised %r", error)

    def retry_later(self, msg: TaskResult, exc: BaseException) -> bool:
        """A healthy failure: retry it after a backoff if its policy says so.

        True if the message is dealt with (delayed, or answered with
        ``RetriesExhaustedError``); False: the caller gets ``exc``. Never for an
        at-most-once message, during kill(), after a cancel, or for an answered reply
        (a timeout answers at once: a timed-out run is not retried).
        """
        extra = msg._extra
        policy = (extra.retry if extra is not None else None) or self.retry
        if policy is None or msg._once or self.killing or msg.ready():
            return False
        if msg._ctx is not None and msg._ctx.cancelled:
            return False
        retries = msg.retries
        # The user's code, run in the worker: the predicate, a retry_after property, the random source.
        try:
            retryable = policy.retries(exc)
            delay = policy.delay(exc, retries) if retryable and retries < policy.attempts else None
        except BaseException as error:
            self.survive(error)
            self.log("error", "tasker: RetryPolicy raised %r; not retrying", error)
            return False
        # It may have yielded: a kill(), a timeout or a cancel() may have come meanwhile.
        if not retryable or self.killing or msg.ready() or (msg._ctx is not None and msg._ctx.cancelled):
            return False
        if retries >= policy.attempts:
            if not retries:
                return False  # attempts=0: the caller gets its own error
            self.finish(msg, RetriesExhaustedError(msg._attempts, exc))
            return True
        if delay is None:  # a retry_after hint longer than the policy waits
            return False
        if extra is None:
            extra = Extra(None, None)
            msg._spec = (*msg._spec[:4], extra)  # the spec may be shared: this message gets its own
        extra.retries += 1
        msg._ctx = None  # a cancel() while it waits must find it in the mailbox, not a stale context
        self.mailbox.delay(msg, delay)  # before the collector runs: nothing it raises can lose it
        if self._record_transient_retry is not None:
            try:
                self._record_transient_retry()
            except BaseException as error:
                self.survive(error)
                self.log("error", "tasker: collector.record_transient_retry raised %r", error)
        return True

    def cancel(self, msg: TaskResult) -> bool:
        """``TaskResult.cancel()``: withdraw a queued message, or cancel a running one's context."""
        if get_ident() != self.thread:
            return call_in_hub(self.hub, self.cancel, msg)  # type: ignore[no-any-return]
        if msg.ready():
            return False
        if self.mailbox.remove(msg) or msg._ctx is None:
            self.finish(msg, CancelledError(*_BEFORE_IT_RAN), cancelled=True)
        else:
            msg._ctx.cancel()
        return True

    def cancel_all(self, msgs: deque[TaskResult]) -> None:
        """``cancel()`` of each message in turn, oldest first: a batch's cleanup (``map``,
        ``imap_unordered``). Empties ``msgs``.

        What :meth:`cancel` does, with what every message shares looked up once: the
        thread check, the mailbox, the method calls. A message of another manager gets
        its own ``cancel()``. Each message leaves ``msgs`` as it is answered, so one
        that nothing else holds is freed at once: the garbage collector, counting what
        is allocated against what is freed, then has no reason to run a collection
        (over the whole heap, at 50k messages) in the middle of the cleanup.
        """
        if get_ident() != self.thread:
            call_in_hub(self.hub, self.cancel_all, msgs)
            return
        remove = self.mailbox.remove
        finish = self.finish
        take = msgs.popleft
        while msgs:
            msg = take()
            if msg._spec[3] is not self:
                msg.cancel()
            elif msg.ready():
                continue
            elif remove(msg) or msg._ctx is None:
                finish(msg, CancelledError(*_BEFORE_IT_RAN), cancelled=True)
            else:
                msg._ctx.cancel()

    def time_out(self, worker: Any, msg: TaskResult) -> None:
        """A run's timeout fired: answer the caller now, then interrupt the task.

        After the task failed, while its worker runs the hooks that decide its fate
        (``check_health``, the retry policy), the caller is answered and nothing is
        interrupted: whatever they decide then finds the reply answered. Not while
        kill() runs: it has interrupted the task already, and answers its caller with
        ``TaskKilledError`` once the task's code has ended.
        """
        if worker.current is not msg or msg.ready() or self.killing:
            return
        error = TaskTimeoutError(f"task ran longer than its timeout of {msg._timeout} s")
        if msg._ctx is not None:
            msg._ctx.cancel()
        self.finish(msg, error)
        if worker.in_task:
            self.hub.loop.run_callback(self._throw_timeout, worker, msg, error)

    def _throw_timeout(self, worker: Any, msg: TaskResult, error: BaseException) -> None:
        if worker.current is msg and worker.in_task and not self.killing:
            worker.greenlet.throw(Interrupt(error))

    # -- the user's hooks ----------------------------------------------------------------

    def healthy(self, exc: BaseException) -> bool:
        """``check_health(exc)``; a check that raises counts as unhealthy."""
        check = self._check_health
        if check is None:
            return True
        try:
            return bool(check(exc))
        except BaseException as error:
            self.survive(error)
            self.log("error", "tasker: check_health raised %r; treating the worker as unhealthy", error)
            return False

    def destroy(self, resource: Any, caller: bool = False) -> None:
        """``on_destroy(resource)``; what it raises is logged.

        ``caller``: this runs in the caller's own greenlet (``run_task``'s temporary
        resource), so what was thrown into it while ``on_destroy`` blocked (its own
        ``Timeout``, a kill of its greenlet) is logged and then goes on to it.
        """
        on_destroy = self._on_destroy
        if on_destroy is not None:
            try:
                on_destroy(resource)
            except BaseException as exc:  # a close bounded by its own Timeout, or worse
                thrown = caller and thrown_in(exc)
                if not thrown:
                    self.survive(exc)
                self.log("error", "tasker: on_destroy raised %r", exc)
                if thrown:
                    raise

    def log(self, level: str, msg: str, *args: Any) -> None:
        try:
            getattr(self._logger, level)(msg, *args)
        except BaseException as exc:
            self.survive(exc)
            logging.getLogger("tasker").error("tasker: the logger raised %r", exc)

    def survive(self, exc: BaseException) -> None:
        """Re-raise what user code raised that must end the greenlet; swallow the rest.

        The logger and the collector run inside the actors: a ``gevent.Timeout`` or a
        custom BaseException from them must not end one. (In a caller's own greenlet,
        ``submit`` and ``run_task``, the collector's records let through what was thrown
        into that greenlet: :meth:`record_arrival`.) ``KeyboardInterrupt`` and
        ``SystemExit`` keep gevent's meaning, and a ``GreenletExit`` in a greenlet that
        shutdown is ending is shutdown's own.
        """
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        if self.ours(exc):
            raise exc

    def ours(self, exc: BaseException) -> bool:
        """Whether ``exc`` is shutdown's own: a ``GreenletExit`` in a greenlet it is ending."""
        return isinstance(exc, gevent.GreenletExit) and getcurrent() in self.ending

    def end(self, greenlet: Any) -> None:
        """Kill one of our greenlets (a worker, an actor) as part of shutdown."""
        self.ending.add(greenlet)
        greenlet.kill(block=False)
