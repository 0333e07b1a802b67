"""The lifecycle of a manager: running, then closing (graceful ``stop``, or ``kill``), then finished.

``TaskManager`` (the façade, ``_manager``) builds one :class:`Shutdown` and calls into it
for ``stop()``, ``kill()`` and its callbacks; the parent-context watcher runs here too.
It owns the shutdown state — who called what, the greenlets inside ``stop()``/``kill()``
(never interrupted or ended by shutdown), what waits for what — and the user code it
must wait for and may interrupt: tasks (in the workers), ``run_task`` calls (the pool's)
and callbacks (counted and run here).

- **graceful** (``stop``, a cancelled parent context): stop accepting, let the workers
  drain the lanes, wait for ``run_task`` calls and owed callbacks; past ``stop``'s
  timeout, escalate to a kill;
- **kill**: answer every queued message, end the workers, interrupt ``run_task`` calls
  and callbacks; a running task's caller is answered once the task's code has ended (its
  ``finally`` blocks included), or when ``Config.kill_timeout`` passes;
- **teardown**: end the actors and destroy the pool's resources, in a greenlet of its
  own. Any caller may run it, and again: a ``stop()``/``kill()`` whose own greenlet was
  ended halfway is finished by a greenlet of the manager's (the resumer).

Every wait here is bounded by ``kill_timeout`` once a kill has begun: then what still
runs is logged and shutdown goes on.

Dependencies run one way: façade → shutdown → actors (``_supervisor``, ``_scaler``,
``_pool``) → core → values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from greenlet import getcurrent

from ._clock import Clock
from ._context import Context
from ._core import NO_RESOURCE, Core
from ._errors import ManagerStoppedError, TaskKilledError
from ._message import Interrupt, TaskResult
from ._pool import ResourcePool
from ._scaler import Scaler
from ._supervisor import Supervisor
from ._worker import Worker

__all__ = ["Deadline", "Shutdown"]

Callback = Callable[[Any, "BaseException | None"], Any]


class Deadline:
    """``expired`` is set ``seconds`` from now on ``clock`` (never, for None)."""

    __slots__ = ("_timer", "expired")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self.expired = Event()
        self._timer = clock.call_later(seconds, self.expired.set) if seconds is not None else None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Shutdown:
    """How one manager stops: its state, and the code that ends everything it started."""

    def __init__(
        self,
        core: Core,
        supervisor: Supervisor,
        pool: ResourcePool,
        scaler: Scaler | None,
        kill_timeout: float | None,
    ) -> None:
        self._core = core
        self._clock = core.clock
        self._mailbox = core.mailbox
        self._supervisor = supervisor
        self._pool = pool
        self._scaler = scaler
        self.kill_timeout = kill_timeout
        core.progressed = self.progressed
        self.stop_called = False
        self.stop_by: float | None = None  # when a stop(timeout) escalates to kill(), on the clock
        self.kill_called = False
        self.quiet = Event()  # closing, drained, no run_task, no pending callback
        self.finished = Event()
        self.callbacks = 0  # callbacks owed and not yet returned
        self.callback_greenlets: set[Any] = set()  # greenlets inside a callback now
        self.excused_callbacks = 0  # callbacks that stop() was called from: it must not wait for itself
        self.owed: list[TaskResult] = []  # interrupted by kill(): answered once their task's code has ended
        self._wakers: list[Event] = []  # of shutdown calls waiting for something to end
        self._stoppers: set[Any] = set()  # greenlets inside stop()/kill(): never interrupted or ended by shutdown
        self._tearing: set[Any] = set()  # of those, the ones inside the teardown now
        self.destroyer: gevent.Greenlet | None = None  # destroys the pool's resources at teardown
        self.resumer: gevent.Greenlet | None = None  # finishes a shutdown whose caller was killed
        self.watcher: gevent.Greenlet | None = None  # stops gracefully when the parent context is cancelled

    def watch(self, parent: Context) -> None:
        """Stop gracefully once ``parent`` is cancelled."""
        self.watcher = gevent.spawn(self._watch_parent, parent)

    # -- callbacks ------------------------------------------------------------------

    def call_back(self, callback: Callback, reply: TaskResult) -> None:
        """Call a callback variant's ``callback`` once (owed since its submission); in its own greenlet."""
        me = getcurrent()
        self.callback_greenlets.add(me)
        if self._core.killing:  # still called once, but interrupted if it blocks
            self._core.hub.loop.run_callback(self._interrupt_callback, me)
        try:
            if reply.successful():
                callback(reply.value, None)
            else:
                callback(None, reply.exception)
        except Interrupt:
            self._core.log("warning", "tasker: callback %r interrupted by kill()", callback)
        except BaseException as exc:
            self._core.log("error", "tasker: callback %r raised %r", callback, exc)
            self._core.survive(exc)
        finally:
            self.callback_greenlets.discard(me)
            self.callbacks -= 1
            self.progressed()

    def _interrupt_callback(self, greenlet: Any) -> None:
        if greenlet in self.callback_greenlets:
            greenlet.throw(Interrupt(TaskKilledError("callback interrupted by kill()")))

    # -- stop and kill --------------------------------------------------------------

    def stop(self, timeout: float | None) -> bool:
        """``TaskManager.stop``, in the manager's thread."""
        if self.stop_called or self.kill_called:
            raise ManagerStoppedError("stop() or kill() was already called")
        me = getcurrent()
        if me in self._supervisor.workers or me in self._pool.running or me is self._supervisor.greenlet:
            raise RuntimeError(
                "stop() called from inside this manager (a task, a hook, run_task, or the logger or "
                "collector in a worker or the supervisor) would wait for itself; call kill(), or stop() "
                "from another greenlet (gevent.spawn(manager.stop))"
            )
        self.stop_called = True
        if timeout is not None:  # a stop resumed by our own greenlet keeps its deadline
            self.stop_by = self._clock.now() + timeout
        self.excused_callbacks += int(me in self.callback_greenlets)
        try:
            return self._graceful(timeout)
        except BaseException:
            self._resume_later()
            raise

    def kill(self) -> None:
        """``TaskManager.kill``, in the manager's thread."""
        if self.kill_called or self.finished.is_set():
            raise ManagerStoppedError("kill() was already called, or the manager has stopped")
        self.kill_called = True
        me = getcurrent()
        self._stoppers.add(me)  # an actor that called kill() (from a hook) must not be ended in it
        deadline = self.deadline()
        try:
            self._kill_now(deadline)
            self.teardown(deadline)
        except BaseException:
            self._resume_later()
            raise
        finally:
            self._stoppers.discard(me)
            deadline.cancel()

    def _resume_later(self) -> None:
        """The caller of stop()/kill() was killed or timed out halfway: finish in our own greenlet."""
        if not self.finished.is_set() and self.resumer is None:
            self.resumer = gevent.spawn(self._resume)

    def _resume(self) -> None:
        if not self._core.killing:
            self._graceful(None if self.stop_by is None else max(0.0, self.stop_by - self._clock.now()))
            return
        deadline = self.deadline()
        try:
            self.teardown(deadline)
        finally:
            deadline.cancel()

    def _watch_parent(self, parent: Context) -> None:
        while not parent.cancelled:
            try:
                parent.wait()
            except BaseException as exc:  # not ours to end it: only teardown ends the watcher
                self._core.survive(exc)
        self._core.log("info", "tasker: parent context cancelled; stopping gracefully")
        if not self.finished.is_set():
            self._graceful(None)

    def _close(self) -> None:
        """Stop accepting; let workers exit once the lanes are empty."""
        if not self._core.accepting:
            return
        self._core.accepting = False
        self._mailbox.close()
        self._supervisor.poke()

    def progressed(self) -> None:
        """Something shutdown may wait for has ended (a run_task call, a callback, a worker)."""
        for waker in self._wakers:
            waker.set()
        self.check_quiet()

    def check_quiet(self) -> None:
        if (
            not self._core.accepting
            and self._supervisor.drained.is_set()
            and not self._pool.running
            and self.callbacks <= self.excused_callbacks
        ):
            self.quiet.set()

    def _graceful(self, timeout: float | None) -> bool:
        self._close()
        self.check_quiet()
        me = getcurrent()
        self._stoppers.add(me)
        expired = Event()
        timer = self._clock.call_later(timeout, expired.set) if timeout is not None else None
        deadline: Deadline | None = None
        try:
            gevent.wait([self.quiet, expired, self.finished], count=1)
            if timer is not None:
                timer.cancel()
            clean = self.quiet.is_set() and not self._core.killing
            deadline = self.deadline()
            if not clean and not self._core.killing:
                self._core.log("warning", "tasker: stop(timeout=%s) did not drain in time; killing", timeout)
                self._kill_now(deadline)
            self.teardown(deadline)
        finally:
            self._stoppers.discard(me)
            if timer is not None:
                timer.cancel()
            if deadline is not None:
                deadline.cancel()
        return clean

    def deadline(self) -> Deadline:
        """``kill_timeout`` from now: how long shutdown waits for code it interrupted or must not."""
        return Deadline(self._clock, self.kill_timeout)

    def _kill_now(self, deadline: Deadline) -> None:
        """Answer every message and interrupt all user code; wait (to ``deadline``) for it to end."""
        core = self._core
        core.killing = True
        self._close()
        me = getcurrent()  # kill() may come from user code of ours: never interrupt the caller
        supervisor = self._supervisor
        supervisor.close()
        actors = [supervisor.greenlet] if self._scaler is None else [supervisor.greenlet, self._scaler.greenlet]
        for actor in actors:
            if actor is not me and actor not in self._stoppers:  # one in stop()/kill() ends by itself
                core.end(actor)
        workers = list(supervisor.workers.values())
        supervisor.workers.clear()
        supervisor.drained.set()
        # Take every message out of reach first; only then run user code (the collector).
        dropped = self._mailbox.drain()
        # A message whose task is not running (handed over but not started, or its worker
        # in a hook after it: the retry predicate, the supervisor's reaping) is answered now.
        # One whose task runs is answered once its code has ended: its worker answers it as
        # it unwinds, or _answer_owed does. Not the task that called kill(): its own outcome
        # answers it.
        answered = [w.current for w in workers if w.current is not None and not w.in_task]
        self.owed += [w.current for w in workers if w.current is not None and w.in_task and w.greenlet is not me]
        ending = [w.greenlet for w in workers if w.greenlet is not me]
        run_callback = core.hub.loop.run_callback
        for worker in workers:
            if worker.greenlet is me or worker.destroying:
                continue
            if worker.greenlet.gr_frame is None:  # it has not run yet: its start is cancelled now
                core.end(worker.greenlet)
                worker.release()  # it still holds the resource it was handed, if any
            else:
                run_callback(self._end_worker, worker)
        for greenlet in self._pool.interruptible(me):
            run_callback(self._throw_run_task, greenlet)
        core.ctx.cancel()  # after the interrupts: they land first, and interrupted callers get TaskKilledError
        # A callback waiting in our own stop() is not interrupted: this kill() ends its wait.
        spared = {me} | self._stoppers
        for greenlet in self.callback_greenlets - spared:
            run_callback(self._interrupt_callback, greenlet)
        for msg in dropped:
            core.finish(msg, TaskKilledError("dropped from the queue by kill()"), cancelled=True)
        for msg in answered:
            core.finish(msg, TaskKilledError("interrupted by kill()"), cancelled=True)
        # A running task's caller is answered once the task's code has ended (its worker
        # answers it as it unwinds), not while its ``finally`` still runs; or at the deadline.
        runs_mine = self._pool.running.count(me)
        tasks = "the interrupted tasks and run_task calls"
        self._await(ending, lambda: self._pool.in_flight <= runs_mine, deadline, tasks)
        self._answer_owed()
        callbacks_spared = len(self.callback_greenlets & spared)
        self._await([], lambda: self.callbacks <= callbacks_spared, deadline, "the callbacks")

    def _answer_owed(self) -> None:
        owed, self.owed = self.owed, []
        for msg in owed:
            self._core.finish(msg, TaskKilledError("interrupted by kill()"), cancelled=True)

    def _end_worker(self, worker: Worker) -> None:
        """Kill ``worker`` where it is now, unless that is ``on_destroy``, which is never
        interrupted (kill() waits for it to end).

        Read when the kill lands, not when kill() decides on it: a wake-up scheduled before
        it (the mailbox closing, a hand-over, a burst worker's retirement) may have taken
        the worker from its mailbox into ``on_destroy`` since.
        """
        greenlet = worker.greenlet
        if greenlet.dead or worker.destroying:
            return
        self._core.ending.add(greenlet)  # its GreenletExit is shutdown's own
        greenlet.throw(gevent.GreenletExit)  # as gevent's kill() does, without a second callback

    def _throw_run_task(self, greenlet: Any) -> None:
        if greenlet in self._pool.running and greenlet not in self._pool.destroying:
            greenlet.throw(Interrupt(TaskKilledError("run_task interrupted by kill()")))

    def teardown(self, deadline: Deadline) -> None:
        """End the actors and destroy the pool's resources.

        Any caller may run it, and again: a ``stop()`` whose greenlet was killed halfway
        leaves the rest to a later ``kill()``. The resources are destroyed in a greenlet
        of their own, so no interrupt of the caller cuts an ``on_destroy`` short.
        """
        core = self._core
        core.tearing_down = True
        self._answer_owed()  # a kill() ended halfway: its replies are owed still
        for msg in self._mailbox.drain():  # none after a drain; this drops key records and timers
            core.finish(msg, TaskKilledError("dropped at teardown"), cancelled=True)
        me = getcurrent()
        self._supervisor.close()
        if self._scaler is not None:
            self._scaler.closed = True
        actors = [self._supervisor.greenlet, self._scaler and self._scaler.greenlet, self.watcher]
        alive = [g for g in actors if g is not None and g is not me and not g.dead]
        # An actor inside stop()/kill() itself (the watcher's graceful stop, or kill() from a
        # hook an actor ran) is never ended: it unwinds by itself once the shutdown finished.
        ending = [g for g in alive if g not in self._stoppers]
        for greenlet in ending:
            core.end(greenlet)
        if self.destroyer is None and self._pool.available:
            self.destroyer = gevent.spawn(self._destroy_pool)
        if self.destroyer is not None and self.destroyer is not me:
            ending.append(self.destroyer)
        self._tearing.add(me)
        try:
            self._await(ending, lambda: True, deadline, "the actors and the pool's on_destroy")
            if me is self.destroyer:  # kill() from a hook its on_destroy ran: it cannot wait for itself
                self._destroy_pool()
            self.finished.set()
            # An actor (or the destroyer) does not wait for another actor in teardown too: the
            # two would wait for each other. Any other caller (yours) waits for them all.
            mine = me in actors or me is self.destroyer
            unwinding = [g for g in alive if g in self._stoppers and not (mine and g in self._tearing)]
            self._await(unwinding, lambda: True, deadline, "the actors inside stop() or kill()")
        finally:
            self._tearing.discard(me)

    def _destroy_pool(self) -> None:
        while (resource := self._pool.pop()) is not NO_RESOURCE:
            self._core.destroy(resource)

    def _await(self, greenlets: list[Any], done: Callable[[], bool], deadline: Deadline, what: str) -> None:
        """Wait until every greenlet has ended and ``done()``, or until the deadline."""
        alive = [g for g in greenlets if not g.dead]
        left = len(alive)
        wake = Event()

        def ended(greenlet: Any) -> None:
            nonlocal left
            left -= 1
            wake.set()

        for greenlet in alive:
            greenlet.rawlink(ended)
        self._wakers.append(wake)
        try:
            while left or not done():
                if deadline.expired.is_set():
                    self._core.log(
                        "error", "tasker: gave up after kill_timeout=%s s waiting for %s to end (%d greenlets left)",
                        self.kill_timeout, what, left,
                    )
                    return
                wake.clear()
                gevent.wait([wake, deadline.expired], count=1)
        finally:
            self._wakers.remove(wake)
            for greenlet in alive:
                greenlet.unlink(ended)
