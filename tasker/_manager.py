"""``TaskManager``: the public face of the actors.

The manager wires the actors together — workers (``_worker``), the supervisor
(``_supervisor``), the scaler (``_scaler``), the mailbox (``_mailbox``) and the
``run_task`` pool (``_pool``) — and implements ``submit``, under the seed's twelve
variants (``_variants``), ``run_task``, ``map``/``imap_unordered`` (``_batch``) and the
observations (``stats``, ``metrics``). Replies are resolved by the core
(:meth:`Core.finish <tasker._core.Core.finish>`), once each. The lifecycle — ``stop``,
``kill``, the parent context, and the callbacks shutdown waits for — is ``_shutdown``'s:
the manager hands those calls to it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Generator, Hashable, Iterable
from types import FunctionType
from typing import Any, TypeVar, final

import gevent

from ._batch import imap_unordered, map_ordered
from ._clock import Clock, MonotonicClock
from ._config import Config, refuse_async, seconds_ok
from ._context import Context
from ._core import Core
from ._errors import ResourceCreationError
from ._mailbox import Mailbox
from ._message import Extra, Spec, TaskResult
from ._metrics import Collector
from ._pool import ResourcePool
from ._retry import RetryPolicy
from ._scaler import Scaler
from ._shutdown import Shutdown
from ._supervisor import Supervisor
from ._threads import ThreadTaskResult, call_in_hub, get_ident
from ._types import TaskMetrics, TaskStats
from ._variants import Callback, SeedVariants, Task, task_fn

__all__ = ["TaskManager"]

R = TypeVar("R")
E = TypeVar("E")

TOP_KEYS = 10  # keys listed in TaskStats.key_in_flight


@final
class _KeywordsOnly:
    """The type of ``submit``'s hidden second parameter: only its default can be passed."""

    def __repr__(self) -> str:
        return "<keywords only>"


_KEYWORDS = _KeywordsOnly()


def _keywords_only(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature as its callers see it: ``_keywords`` gone, the options after ``*``."""
    sig = inspect.signature(fn)
    kept = [p for p in sig.parameters.values() if p.name != "_keywords"]
    keyword = inspect.Parameter.KEYWORD_ONLY
    return sig.replace(parameters=[p if p.name in ("self", "task") else p.replace(kind=keyword) for p in kept])


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
        self._mailbox = core.mailbox
        self._spec: Spec = (False, False, config.task_timeout, core, None)  # what a submission with no options gets
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
        self._shutdown = Shutdown(core, self._supervisor, self._pool, self._scaler, config.kill_timeout)
        if config.ctx is not None:
            self._shutdown.watch(config.ctx)

    # -- submission -----------------------------------------------------------------

    def submit(
        self,
        task: Task[R, E],
        _keywords: _KeywordsOnly = _KEYWORDS,  # the options are keyword-only: see the end of the docstring
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

        The options are keyword-only, but not by a bare ``*``: CPython binds each omitted
        keyword-only argument with a dict lookup (six here: 4% of a no-op task), and
        copies ordinary defaults from a tuple. A second positional argument lands in
        the hidden ``_keywords`` and is refused; ``inspect.signature`` shows ``*``.
        """
        if _keywords is not _KEYWORDS:
            raise TypeError(
                f"submit() takes the task as its only positional argument, got {_keywords!r} after it; "
                "pass the options by keyword (priority=..., once=..., timeout=...)"
            )
        core = self._core
        if get_ident() != core.thread:
            return self._submit_from_thread(task, priority, once, timeout, block, key, retry)
        fn = task if task.__class__ is FunctionType else task_fn(task)  # the common case first, cheaply
        if priority is False and once is False and timeout is None and block is True and key is None and retry is None:
            spec = self._spec  # the defaults: six identity checks, and a shared spec
        else:
            if priority is not False or once is not False or block is not True:
                _check_flags(priority=priority, once=once, block=block)
            if timeout is None:
                timeout = self._spec[2]  # Config.task_timeout
            else:
                _check_timeout(timeout)
            if key is None and retry is None:
                extra = None
            else:
                _check_key(key, retry)
                extra = Extra(key, retry)
            spec = (priority, once, timeout, core, extra)
        if not core.accepting or core.parent is not None:
            core.check_accepting()
        mailbox = self._mailbox
        if mailbox.max_size is not None:
            mailbox.wait_for_room(priority, block, spec[2])
            core.check_accepting()
        clock = core.now  # not core.now(): an attribute called as a method is a slow lookup
        now = clock()
        msg = TaskResult()
        msg._fn = fn
        msg._spec = spec
        msg._queued_at = now
        msg._started_at = None
        msg._attempts = 0
        msg._ctx = None
        core.arrived += 1
        if spec[4] is not None or mailbox.gated or mailbox.idle or mailbox.idle_burst:
            mailbox.put(msg)  # before any user code runs: a collector that yields can't race stop()
        else:
            lane = mailbox.priority if priority else mailbox.main  # Lane.append, inline
            msg._lane = lane
            lane.items.append(msg)
        arrivals = core.pending_arrivals
        if arrivals is None:
            core.record_arrival(msg)
        else:
            arrivals.append(now)
            if len(arrivals) >= core.fold_every:
                core.fast.fold()  # type: ignore[union-attr]  # set with arrivals
        return msg

    submit.__signature__ = _keywords_only(submit)  # type: ignore[attr-defined]

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
        reply = call_in_hub(self._core.hub, self.submit, task, withdraw=True, **flags)
        reply.__class__ = ThreadTaskResult  # same layout; its waits keep this thread's loop alive
        return reply  # type: ignore[no-any-return]

    def _submit_with_callback(self, task: Task[R, E], callback: Callback, priority: bool, once: bool) -> TaskResult:
        """Submit ``task``; ``callback(result, error)`` gets its outcome. Returns the reply
        for tasker's own use (a calling thread that gives up cancels it), not the caller's."""
        if get_ident() != self._core.thread:  # the callback then runs in the manager's thread
            hub = self._core.hub
            return call_in_hub(hub, self._submit_with_callback, task, callback, priority, once, withdraw=True)  # type: ignore[no-any-return]
        if not callable(callback):
            raise TypeError(f"callback must be callable as callback(result, error), got {callback!r}")
        refuse_async("callback", callback)
        shutdown = self._shutdown
        shutdown.callbacks += 1  # owed from here: a collector that yields in submit can't race stop()
        try:
            reply = self.submit(task, priority=priority, once=once)
        except BaseException:
            shutdown.callbacks -= 1
            shutdown.progressed()  # a shutdown may be waiting for this callback (refused while waiting for room)
            raise
        reply.rawlink(lambda r: gevent.spawn(shutdown.call_back, callback, r))
        return reply

    def run_task(self, task: Task[R, E]) -> E:
        """Run ``task`` now in this greenlet, bypassing the queues.

        Uses a pooled resource if one is free, else a temporary one (created, used
        once, destroyed). No health check, no retry.

        Raises:
            ResourceCreationError: the temporary resource could not be created.
            ManagerStoppedError: ``stop()``/``kill()`` has begun.
        """
        if get_ident() != self._core.thread:  # the task runs in the manager's thread
            return call_in_hub(self._core.hub, self.run_task, task, withdraw=True)  # type: ignore[no-any-return]
        fn = task_fn(task)
        refuse_async("task", fn)
        return self._pool.run(fn)  # type: ignore[no-any-return]

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
        _check_flags(priority=priority, return_exceptions=return_exceptions)
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
        _check_flags(priority=priority, return_exceptions=return_exceptions)
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
        if get_ident() != self._core.thread and not self._shutdown.finished.is_set():
            # Read where the actors change it, not mid-change (once finished, nothing does).
            return call_in_hub(self._core.hub, self.stats)  # type: ignore[no-any-return]
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
        if get_ident() != self._core.thread and not self._shutdown.finished.is_set():
            # The collector is fed (and folds) in the manager's thread; once finished, no more.
            return call_in_hub(self._core.hub, self.metrics)  # type: ignore[no-any-return]
        return self._core.collector.metrics()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> TaskManager[R, E]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not (self._shutdown.stop_called or self._shutdown.kill_called):
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
            ManagerStoppedError: ``stop()`` or ``kill()`` was already called, or this
                process was forked after the manager was made.
            RuntimeError: called from inside the manager (a task, a hook, ``run_task``,
                or the logger or collector inside an actor): it would wait for itself.
        """
        self._core.check_process()
        if get_ident() != self._core.thread:
            return call_in_hub(self._core.hub, self.stop, timeout)  # type: ignore[no-any-return]
        _check_timeout(timeout)
        return self._shutdown.stop(timeout)

    def kill(self) -> None:
        """Stop now: fail queued messages and interrupt running tasks with ``TaskKilledError``.

        Cancels the contexts of running tasks and interrupts the user code running in
        the manager (tasks, ``run_task`` calls and their ``on_create``, callbacks) with
        an exception that ``except Exception`` does not catch; a callback still owed is
        called, and interrupted if it blocks. A running task's caller is answered once
        the task's code has ended, its ``finally`` blocks included. kill() waits, at most
        ``Config.kill_timeout`` seconds, for that code and for ``on_destroy`` calls
        (never interrupted) to end, destroys every resource and ends every actor. Works
        from anywhere, user code of this manager included (its own greenlet then ends
        after kill() returns to it). Allowed while a ``stop()`` runs: it escalates it.

        Raises:
            ManagerStoppedError: ``kill()`` was already called, or the manager has
                already finished stopping, or this process was forked after it was made.
        """
        self._core.check_process()
        if get_ident() != self._core.thread:
            call_in_hub(self._core.hub, self.kill)
            return
        self._shutdown.kill()
