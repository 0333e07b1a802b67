"""``TaskManager``: the public face of the actors, and the one place replies are resolved.

The manager wires the actors together — workers (``_worker``), the supervisor
(``_supervisor``), the scaler (``_scaler``), the mailbox (``_mailbox``) and the
``run_task`` pool (``_pool``) — implements ``submit``, under the seed's twelve variants
(``_variants``), and owns the lifecycle: running, then closing
(graceful ``stop``, or ``kill``), then finished. :meth:`TaskManager._finish` is the
only code that resolves a reply; it does so once and records the metrics of that one
reply, so every submission gets exactly one answer however kill, timeouts, cancels and
workers race.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Hashable, Iterable
from typing import Any, TypeVar

import gevent
from gevent.event import Event
from greenlet import getcurrent

from ._batch import imap_unordered, map_ordered
from ._clock import Clock, MonotonicClock
from ._config import Config, seconds_ok
from ._context import Context
from ._core import NO_RESOURCE, Core
from ._errors import ManagerStoppedError, ResourceCreationError, TaskKilledError
from ._mailbox import Mailbox
from ._message import Extra, Interrupt, TaskResult, message
from ._metrics import Collector
from ._pool import ResourcePool
from ._retry import RetryPolicy
from ._scaler import Scaler
from ._supervisor import Supervisor
from ._threads import ThreadTaskResult, call_in_hub, get_ident
from ._types import TaskMetrics, TaskStats
from ._variants import Callback, SeedVariants, Task

__all__ = ["TaskManager"]

R = TypeVar("R")
E = TypeVar("E")

TOP_KEYS = 10  # keys listed in TaskStats.key_in_flight


def _task_fn(task: Any) -> Callable[[Context, Any], Any]:
    if callable(task):
        return task  # type: ignore[no-any-return]
    execute = getattr(task, "execute", None)
    if callable(execute):
        return execute  # type: ignore[no-any-return]
    raise TypeError(f"task must be callable as task(ctx, resource) or have execute(ctx, resource), got {task!r}")


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not seconds_ok(timeout):
        raise ValueError(f"timeout must be None or a finite number of seconds > 0, got {timeout!r}")


def _check_key(key: Any, retry: Any) -> None:
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"key must be hashable, got {key!r}") from None
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a tasker.RetryPolicy or None, got {retry!r}")


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if value.__class__ is not bool:
            raise TypeError(f"{name} must be a bool, got {value!r}")


class _Deadline:
    """``expired`` is set ``seconds`` from now on ``clock`` (never, for None)."""

    __slots__ = ("_timer", "expired")

    def __init__(self, clock: Clock, seconds: float | None) -> None:
        self.expired = Event()
        self._timer = clock.call_later(seconds, self.expired.set) if seconds is not None else None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class TaskManager(SeedVariants[R, E]):
    """Runs tasks on workers that each own a resource made by ``config.on_create``.

    Starts the base workers, the supervisor, the scaler and the ``run_task`` pool.

    Raises:
        ResourceCreationError: a resource for the pool or the base workers could not be
            created; whatever was created is destroyed first. ``__cause__`` is the
            ``on_create`` exception.
    """

    def __init__(self, config: Config[R]) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"TaskManager needs a tasker.Config, got {config!r}")
        self._config = config
        clock: Clock = config.clock or MonotonicClock()
        self._core = core = Core(
            on_create=config.on_create,
            on_destroy=config.on_destroy,
            check_health=config.check_health,
            max_retries=config.max_retries,
            clock=clock,
            mailbox=Mailbox(
                config.max_queue_size,
                clock,
                key_concurrency=config.key_concurrency,
                key_rate=config.key_rate,
                key_limits=config.key_limits,
                rate_limit=config.rate_limit,
            ),
            retry=config.retry,
            logger=config.logger or logging.getLogger("tasker"),
            collector=config.collector or Collector(clock=clock),
            parent=config.ctx,
        )
        core.progressed = self._progressed
        self._clock = clock
        self._mailbox = core.mailbox
        self._task_timeout = config.task_timeout
        self._stop_called = False
        self._kill_called = False
        self._core.tearing_down = False
        self._quiet = Event()  # closing, drained, no run_task, no pending callback
        self._wakers: list[Event] = []  # of shutdown calls waiting for something to end
        self._finished = Event()
        self._callbacks = 0  # callbacks not yet returned
        self._callback_greenlets: set[Any] = set()  # greenlets inside a callback now
        self._excused_callbacks = 0  # callbacks that stop() was called from: it must not wait for itself
        self._stoppers: set[Any] = set()  # greenlets inside stop()/kill(): never interrupted or ended by shutdown
        self._tearing: set[Any] = set()  # of those, the ones inside the teardown now
        self._destroyer: gevent.Greenlet | None = None  # destroys the pool's resources at teardown
        self._resumer: gevent.Greenlet | None = None  # finishes a shutdown whose caller was killed
        self._supervisor = Supervisor(core, config.worker_count)
        pool_size = config.worker_count if config.resource_pool_size is None else config.resource_pool_size
        made: list[Any] = []
        try:
            for _ in range(pool_size + config.worker_count):
                made.append(config.on_create())
        except BaseException as exc:
            for resource in made:
                self._core.destroy(resource)
            if isinstance(exc, Exception):
                raise ResourceCreationError(f"on_create raised {exc!r} while starting the manager") from exc
            raise
        self._pool = ResourcePool(core, made[:pool_size])
        self._supervisor.greenlet.start()
        for resource in made[pool_size:]:
            self._supervisor.start_worker(burst=False, resource=resource)
        max_workers = config.max_worker_count or 2 * config.worker_count
        self._scaler: Scaler | None = None
        if max_workers > config.worker_count:
            linger = config.burst_linger if config.burst_linger is not None else 10 * config.burst_interval
            self._scaler = Scaler(core, self._supervisor, max_workers, config.burst_interval, linger)
            self._scaler.greenlet.start()
        self._watcher: gevent.Greenlet | None = None
        if config.ctx is not None:
            self._watcher = gevent.spawn(self._watch_parent, config.ctx)

    # -- submission -----------------------------------------------------------------

    def submit(
        self,
        task: Task[R, E],
        *,
        priority: bool = False,
        once: bool = False,
        timeout: float | None = None,
        block: bool = True,
        key: Hashable | None = None,
        retry: RetryPolicy | None = None,
    ) -> TaskResult:
        """Queue ``task`` and return its reply at once; the primitive under every variant.

        Args:
            task: ``task(ctx, resource)``, or an object with ``execute(ctx, resource)``.
            priority: use the priority lane, served before the main lane.
            once: at-most-once: never redelivered after an unhealthy failure.
            timeout: seconds the task may run (default ``Config.task_timeout``), and
                with a bounded queue the longest wait for room.
            block: with a bounded queue, False raises ``QueueFullError`` at once when
                the lane is full.
            key: a hashable (a host...): at most ``Config.key_concurrency`` messages of
                one key run at once, at ``Config.key_rate``; a message whose key is at
                its limit waits without holding back other keys.
            retry: the transient retry policy of this submission (default
                ``Config.retry``; ``RetryPolicy(attempts=0)``: none).

        Raises:
            TypeError: ``task`` is not a task, ``key`` is not hashable, ``retry`` is not
                a ``RetryPolicy``. ValueError: a bad ``timeout``.
            ManagerStoppedError: ``stop()``/``kill()`` has begun.
            QueueFullError: no room in a bounded lane.
        """
        if get_ident() != self._core.thread:
            return self._submit_from_thread(task, priority, once, timeout, block, key, retry)
        fn = task if callable(task) else _task_fn(task)
        if key is None and retry is None:
            extra = None  # the plain path: one check
        else:
            _check_key(key, retry)
            extra = Extra(key, retry)
        if priority is not False or once is not False or block is not True:  # the defaults: three identity checks
            _check_flags(priority=priority, once=once, block=block)
        if timeout is None:
            timeout = self._task_timeout
        else:
            _check_timeout(timeout)
        core = self._core
        if not core.accepting or core.parent is not None:
            core.check_accepting()
        mailbox = self._mailbox
        if mailbox.max_size is not None:
            mailbox.wait_for_room(priority, block, timeout)
            core.check_accepting()
        now = core.now()
        msg = message(core, fn, priority, once, timeout, now, extra)
        core.arrived += 1
        mailbox.put(msg)  # before any user code runs: a collector that yields can't race stop()
        arrivals = core.pending_arrivals
        if arrivals is None:
            core.record_arrival()
        else:
            arrivals.append(now)
            if len(arrivals) >= core.fold_every:
                core.fast.fold()  # type: ignore[union-attr]  # set with arrivals
        return msg

    def _submit_from_thread(
        self,
        task: Task[R, E],
        priority: bool,
        once: bool,
        timeout: float | None,
        block: bool,
        key: Hashable | None,
        retry: RetryPolicy | None,
    ) -> TaskResult:
        flags = {"priority": priority, "once": once, "timeout": timeout, "block": block, "key": key, "retry": retry}
        reply = call_in_hub(self._core.hub, self.submit, task, **flags)
        reply.__class__ = ThreadTaskResult  # same layout; its waits keep this thread's loop alive
        return reply  # type: ignore[no-any-return]

    def _submit_with_callback(self, task: Task[R, E], callback: Callback, priority: bool, once: bool) -> None:
        if get_ident() != self._core.thread:  # the callback then runs in the manager's thread
            return call_in_hub(self._core.hub, self._submit_with_callback, task, callback, priority, once)  # type: ignore[no-any-return]
        if not callable(callback):
            raise TypeError(f"callback must be callable as callback(result, error), got {callback!r}")
        self._callbacks += 1  # owed from here: a collector that yields in submit can't race stop()
        try:
            reply = self.submit(task, priority=priority, once=once)
        except BaseException:
            self._callbacks -= 1
            self._progressed()  # a shutdown may be waiting for this callback (refused while waiting for room)
            raise
        reply.rawlink(lambda r: gevent.spawn(self._call_back, callback, r))

    def _call_back(self, callback: Callback, reply: TaskResult) -> None:
        me = getcurrent()
        self._callback_greenlets.add(me)
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
            self._callback_greenlets.discard(me)
            self._callbacks -= 1
            self._progressed()

    def _interrupt_callback(self, greenlet: Any) -> None:
        if greenlet in self._callback_greenlets:
            greenlet.throw(Interrupt(TaskKilledError("callback interrupted by kill()")))

    def run_task(self, task: Task[R, E]) -> E:
        """Run ``task`` now in this greenlet, bypassing the queues.

        Uses a pooled resource if one is free, else a temporary one (created, used
        once, destroyed). No health check, no retry.

        Raises:
            ResourceCreationError: the temporary resource could not be created.
            ManagerStoppedError: ``stop()``/``kill()`` has begun.
        """
        if get_ident() != self._core.thread:  # the task runs in the manager's thread
            return call_in_hub(self._core.hub, self.run_task, task)  # type: ignore[no-any-return]
        return self._pool.run(_task_fn(task))  # type: ignore[no-any-return]

    def map(
        self,
        fn: Callable[[Context, R, Any], E],
        items: Iterable[Any],
        *,
        priority: bool = False,
        max_in_flight: int | None = None,
        return_exceptions: bool = False,
        key: Callable[[Any], Hashable] | None = None,
    ) -> Generator[E | BaseException, None, None]:
        """Run ``fn(ctx, resource, item)`` for each item; yield the results in input order.

        At most ``max_in_flight`` items (default ``2 * max_worker_count``) are read
        ahead. An item's exception is raised at its place (the items still in flight
        are then cancelled), or yielded there with ``return_exceptions=True``.
        ``key(item)``, if given, is the key of each item's submission (``submit(key=)``).
        """
        self._refuse_other_thread("map")
        return map_ordered(self, fn, items, priority, self._read_ahead(max_in_flight), return_exceptions, key)

    def imap_unordered(
        self,
        fn: Callable[[Context, R, Any], E],
        items: Iterable[Any],
        *,
        priority: bool = False,
        max_in_flight: int | None = None,
        return_exceptions: bool = False,
        key: Callable[[Any], Hashable] | None = None,
    ) -> Generator[E | BaseException, None, None]:
        """As :meth:`map`, yielding each result as soon as it is ready."""
        self._refuse_other_thread("imap_unordered")
        return imap_unordered(self, fn, items, priority, self._read_ahead(max_in_flight), return_exceptions, key)

    def _refuse_other_thread(self, name: str) -> None:
        if get_ident() != self._core.thread:  # its iterator waits on gevent queues of the manager's thread
            raise RuntimeError(
                f"{name}() must be called in the thread that made the manager; from another "
                "thread, submit() each item and wait on its reply"
            )

    def _read_ahead(self, max_in_flight: int | None) -> int:
        if max_in_flight is None:
            return 2 * (self._config.max_worker_count or 2 * self._config.worker_count)
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be None or an int >= 1, got {max_in_flight!r}")
        return max_in_flight

    # -- observation ----------------------------------------------------------------

    def stats(self) -> TaskStats:
        """A snapshot of workers, queues and the pool."""
        base = burst = busy = 0
        for worker in self._supervisor.workers.values():
            if worker.started:
                if worker.burst:
                    burst += 1
                else:
                    base += 1
            busy += worker.in_task
        mailbox = self._mailbox
        return TaskStats(
            base_workers=base,
            active_workers=base + burst,
            burst_workers=burst,
            queued_tasks=len(mailbox.main) + mailbox.main.blocked,
            priority_tasks=len(mailbox.priority) + mailbox.priority.blocked,
            available_resources=self._pool.available,
            blocked_submitters=mailbox.blocked_submitters(),
            busy_workers=busy,
            delayed_tasks=mailbox.main.delayed + mailbox.priority.delayed,
            key_waiting_tasks=mailbox.main.blocked + mailbox.priority.blocked,
            key_in_flight=mailbox.key_in_flight(TOP_KEYS),
        )

    def metrics(self) -> TaskMetrics:
        """What the collector reports."""
        return self._core.collector.metrics()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> TaskManager[R, E]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not (self._stop_called or self._kill_called):
            self.stop()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop gracefully: run every queued message (priority first), then clean up.

        Waits for running tasks, in-flight ``run_task`` calls and pending callbacks;
        destroys every resource; ends every actor. The whole call takes at most
        ``timeout`` plus ``Config.kill_timeout`` seconds.

        Args:
            timeout: seconds (of the manager's clock) to drain before escalating to
                :meth:`kill`; None waits as long as it takes.

        Returns:
            True if it drained cleanly, False if it was escalated or killed.

        Raises:
            ManagerStoppedError: ``stop()`` or ``kill()`` was already called.
            RuntimeError: called from inside the manager (a task, a hook, ``run_task``,
                or the logger or collector inside an actor): it would wait for itself.
        """
        if get_ident() != self._core.thread:
            return call_in_hub(self._core.hub, self.stop, timeout)  # type: ignore[no-any-return]
        if self._stop_called or self._kill_called:
            raise ManagerStoppedError("stop() or kill() was already called")
        _check_timeout(timeout)
        me = getcurrent()
        if me in self._supervisor.workers or me in self._pool.running or me is self._supervisor.greenlet:
            raise RuntimeError(
                "stop() called from inside this manager (a task, a hook, run_task, or the logger or "
                "collector in one of its actors) would wait for itself; call kill(), or stop() from "
                "another greenlet (gevent.spawn(manager.stop))"
            )
        self._stop_called = True
        self._excused_callbacks += int(me in self._callback_greenlets)
        try:
            return self._graceful(timeout)
        except BaseException:
            self._resume_later()
            raise

    def kill(self) -> None:
        """Stop now: fail queued messages and interrupt running tasks with ``TaskKilledError``.

        Cancels the contexts of running tasks and interrupts the user code running in
        the manager (tasks, ``run_task`` calls and their ``on_create``, callbacks) with
        an exception that ``except Exception`` does not catch; a callback still owed is
        called, and interrupted if it blocks. Then it waits, at most
        ``Config.kill_timeout`` seconds, for that code and for ``on_destroy`` calls
        (never interrupted) to end, destroys every resource and ends every actor. Works
        from anywhere, user code of this manager included (its own greenlet then ends
        after kill() returns to it). Allowed while a ``stop()`` runs: it escalates it.

        Raises:
            ManagerStoppedError: ``kill()`` was already called, or the manager has
                already finished stopping.
        """
        if get_ident() != self._core.thread:
            call_in_hub(self._core.hub, self.kill)
            return
        if self._kill_called or self._finished.is_set():
            raise ManagerStoppedError("kill() was already called, or the manager has stopped")
        self._kill_called = True
        me = getcurrent()
        self._stoppers.add(me)  # an actor that called kill() (from a hook) must not be ended in it
        deadline = self._deadline()
        try:
            self._kill_now(deadline)
            self._teardown(deadline)
        except BaseException:
            self._resume_later()
            raise
        finally:
            self._stoppers.discard(me)
            deadline.cancel()

    def _resume_later(self) -> None:
        """The caller of stop()/kill() was killed or timed out halfway: finish in our own greenlet."""
        if not self._finished.is_set() and self._resumer is None:
            self._resumer = gevent.spawn(self._resume)

    def _resume(self) -> None:
        if not self._core.killing:
            self._graceful(None)
            return
        deadline = self._deadline()
        try:
            self._teardown(deadline)
        finally:
            deadline.cancel()

    def _watch_parent(self, parent: Context) -> None:
        while not parent.cancelled:
            try:
                parent.wait()
            except BaseException as exc:  # not ours to end it: only teardown ends the watcher
                self._core.survive(exc)
        self._core.log("info", "tasker: parent context cancelled; stopping gracefully")
        if not self._finished.is_set():
            self._graceful(None)

    def _close(self) -> None:
        """Stop accepting; let workers exit once the lanes are empty."""
        if not self._core.accepting:
            return
        self._core.accepting = False
        self._mailbox.close()
        self._supervisor.poke()

    def _progressed(self) -> None:
        """Something shutdown may wait for has ended (a run_task call, a callback, a worker)."""
        for waker in self._wakers:
            waker.set()
        self._check_quiet()

    def _check_quiet(self) -> None:
        if (
            not self._core.accepting
            and self._supervisor.drained.is_set()
            and not self._pool.running
            and self._callbacks <= self._excused_callbacks
        ):
            self._quiet.set()

    def _graceful(self, timeout: float | None) -> bool:
        self._close()
        self._check_quiet()
        me = getcurrent()
        self._stoppers.add(me)
        expired = Event()
        timer = self._clock.call_later(timeout, expired.set) if timeout is not None else None
        deadline: _Deadline | None = None
        try:
            gevent.wait([self._quiet, expired, self._finished], count=1)
            if timer is not None:
                timer.cancel()
            clean = self._quiet.is_set() and not self._core.killing
            deadline = self._deadline()
            if not clean and not self._core.killing:
                self._core.log("warning", "tasker: stop(timeout=%s) did not drain in time; killing", timeout)
                self._kill_now(deadline)
            self._teardown(deadline)
        finally:
            self._stoppers.discard(me)
            if timer is not None:
                timer.cancel()
            if deadline is not None:
                deadline.cancel()
        return clean

    def _deadline(self) -> _Deadline:
        return _Deadline(self._clock, self._config.kill_timeout)

    def _kill_now(self, deadline: _Deadline) -> None:
        """Answer every message and interrupt all user code; wait (to ``deadline``) for it to end."""
        self._core.killing = True
        self._close()
        me = getcurrent()  # kill() may come from user code of ours: never interrupt the caller
        supervisor = self._supervisor
        supervisor.close()
        actors = [supervisor.greenlet] if self._scaler is None else [supervisor.greenlet, self._scaler.greenlet]
        for actor in actors:
            if actor is not me and actor not in self._stoppers:  # one in stop()/kill() ends by itself
                self._core.end(actor)
        self._core.ctx.cancel()
        workers = list(supervisor.workers.values())
        supervisor.workers.clear()
        supervisor.drained.set()
        # Take every message out of reach first; only then run user code (the collector).
        dropped = self._mailbox.drain()
        # Not the task that called kill(): its own outcome answers it. But kill() from a
        # hook of that worker (check_health, on_destroy, the collector) answers it here,
        # since the supervisor that would have is gone.
        interrupted = [
            w.current for w in workers if w.current is not None and (w.greenlet is not me or not w.in_task)
        ]
        ending = [w.greenlet for w in workers if w.greenlet is not me]
        run_callback = self._core.hub.loop.run_callback
        for worker in workers:
            if worker.greenlet is not me and not worker.destroying:
                self._core.end(worker.greenlet)
                if worker.greenlet.dead:  # killed before it first ran: it still holds its resource
                    worker.release()
        for greenlet in self._pool.interruptible(me):
            run_callback(self._throw_run_task, greenlet)
        # A callback waiting in our own stop() is not interrupted: this kill() ends its wait.
        spared = {me} | self._stoppers
        for greenlet in self._callback_greenlets - spared:
            run_callback(self._interrupt_callback, greenlet)
        for msg in dropped:
            self._core.finish(msg, TaskKilledError("dropped from the queue by kill()"), cancelled=True)
        for msg in interrupted:
            self._core.finish(msg, TaskKilledError("interrupted by kill()"), cancelled=True)
        runs_mine = self._pool.running.count(me)
        callbacks_spared = len(self._callback_greenlets & spared)
        self._await(
            ending,
            lambda: self._pool.in_flight <= runs_mine and self._callbacks <= callbacks_spared,
            deadline,
            "the interrupted tasks, run_task calls and callbacks",
        )

    def _throw_run_task(self, greenlet: Any) -> None:
        if greenlet in self._pool.running and greenlet not in self._pool.destroying:
            greenlet.throw(Interrupt(TaskKilledError("run_task interrupted by kill()")))

    def _teardown(self, deadline: _Deadline) -> None:
        """End the actors and destroy the pool's resources.

        Any caller may run it, and again: a ``stop()`` whose greenlet was killed halfway
        leaves the rest to a later ``kill()``. The resources are destroyed in a greenlet
        of their own, so no interrupt of the caller cuts an ``on_destroy`` short.
        """
        self._core.tearing_down = True
        for msg in self._mailbox.drain():  # none after a drain; this drops key records and timers
            self._core.finish(msg, TaskKilledError("dropped at teardown"), cancelled=True)
        me = getcurrent()
        self._supervisor.close()
        if self._scaler is not None:
            self._scaler.closed = True
        actors = [self._supervisor.greenlet, self._scaler and self._scaler.greenlet, self._watcher]
        alive = [g for g in actors if g is not None and g is not me and not g.dead]
        # An actor inside stop()/kill() itself (the watcher's graceful stop, or kill() from a
        # hook an actor ran) is never ended: it unwinds by itself once the shutdown finished.
        ending = [g for g in alive if g not in self._stoppers]
        for greenlet in ending:
            self._core.end(greenlet)
        if self._destroyer is None and self._pool.available:
            self._destroyer = gevent.spawn(self._destroy_pool)
        if self._destroyer is not None and self._destroyer is not me:
            ending.append(self._destroyer)
        self._tearing.add(me)
        try:
            self._await(ending, lambda: True, deadline, "the actors and the pool's on_destroy")
            self._finished.set()
            # An actor does not wait for another actor in teardown too: the two would wait for
            # each other. Any other caller (yours) waits for them all.
            mine = me in actors
            unwinding = [g for g in alive if g in self._stoppers and not (mine and g in self._tearing)]
            self._await(unwinding, lambda: True, deadline, "the actors inside stop() or kill()")
        finally:
            self._tearing.discard(me)

    def _destroy_pool(self) -> None:
        while (resource := self._pool.pop()) is not NO_RESOURCE:
            self._core.destroy(resource)

    def _await(self, greenlets: list[Any], done: Callable[[], bool], deadline: _Deadline, what: str) -> None:
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
                        self._config.kill_timeout, what, left,
                    )
                    return
                wake.clear()
                gevent.wait([wake, deadline.expired], count=1)
        finally:
            self._wakers.remove(wake)
            for greenlet in alive:
                greenlet.unlink(ended)

    # -- what the actors call -------------------------------------------------------
