"""``Integration``: one tasker manager per Celery worker process, and the task helpers."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar

import gevent
from celery import signals  # type: ignore[import-untyped]
from gevent.event import Event

from ... import Config, Context, ManagerStoppedError, TaskKilledError, TaskManager
from ..._config import seconds_ok
from ..._variants import Task, task_fn
from . import _batch
from ._internals import cold_shutdown_started, green_cold_shutdown
from ._outcomes import Backoff, Kind, classify, requeue, retry_later
from ._restore import Restorer
from ._worker import PoolKind, make_step

__all__ = ["Integration"]

R = TypeVar("R")
E = TypeVar("E")

logger = logging.getLogger("tasker.contrib.celery")

_names = itertools.count(1)


class Integration(Generic[R]):
    """Runs one :class:`tasker.TaskManager` in each Celery worker process.

    Create it at import time of your Celery app module, before the worker starts::

        tasks = Integration(app, make_config, stop_timeout=30)

        @app.task(bind=True, acks_late=True)
        def fetch(self, url):
            return tasks.call(self, lambda ctx, session: session.get(url).text, timeout=10)

    Args:
        app: the Celery app.
        make_config: called once per worker process (after the fork, under prefork)
            to make that process's :class:`tasker.Config`.
        stop_timeout: seconds (finite, > 0) ``manager.stop()`` may drain on a warm
            shutdown, after Celery's pool has joined its tasks, before it escalates
            to ``kill()``; None waits as long as it takes.
        retry_backoff: seconds before the first retry after ``RetriesExhaustedError``
            or ``ResourceCreationError``, doubled for each later retry...
        retry_backoff_max: ...up to this many seconds.
        restore_interval: seconds (finite, > 0) between two restores of dead
            workers' unacked messages (Redis broker); None: a quarter of the
            visibility timeout, within 0.5-60 s.
        fix_broker_pool: raise the Redis broker's ``max_connections`` to the worker's
            concurrency plus headroom (else only warn, with ``acks_late``).

    Raises:
        TypeError, ValueError: a bad argument, named in the message.
    """

    def __init__(
        self,
        app: Any,
        make_config: Callable[[], Config[R]],
        *,
        stop_timeout: float | None = 30.0,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 60.0,
        restore_interval: float | None = None,
        fix_broker_pool: bool = True,
    ) -> None:
        if not callable(make_config):
            raise TypeError(f"make_config must be callable as make_config() -> tasker.Config, got {make_config!r}")
        _check_seconds("Integration stop_timeout", stop_timeout)
        _check_seconds("Integration restore_interval", restore_interval)
        self.app = app
        self.name = f"{app.main or 'app'}#{next(_names)}"
        self.fix_broker_pool = fix_broker_pool
        self._make_config = make_config
        self._stop_timeout = stop_timeout
        self._backoff = Backoff(retry_backoff, retry_backoff_max)
        self._restore_interval = restore_interval
        self._manager: TaskManager[R, Any] | None = None
        self._config: Config[R] | None = None
        self._restorer: Restorer | None = None
        self._closed = False  # stop() or kill() has begun
        self._killing = False
        self._ended = Event()  # stop() or kill() has returned
        self._pool_kind: PoolKind | None = None
        app.steps["worker"].add(make_step(self))
        signals.worker_process_init.connect(self._on_process_init, weak=False)
        signals.worker_process_shutdown.connect(self._on_process_shutdown, weak=False)
        signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    # -- the manager of this process ------------------------------------------------

    @property
    def manager(self) -> TaskManager[R, Any]:
        """This process's manager.

        Raises:
            RuntimeError: no manager runs in this process: not a worker, not started
                yet, or already stopped. Stopped (or killed), it is a
                ``tasker.ManagerStoppedError``, so a job that comes too late goes back
                to the broker, as the failure table says.
        """
        manager = self._manager
        if manager is None:
            raise self._no_manager()
        return manager

    def _no_manager(self) -> RuntimeError:
        if self._closed:
            return ManagerStoppedError("tasker.contrib.celery: this process's TaskManager was stopped")
        return RuntimeError(
            "tasker.contrib.celery: no TaskManager runs in this process; tasks using it must run in a "
            "Celery worker started with -P gevent, prefork or solo (or call Integration.start() yourself)"
        )

    def start(self) -> TaskManager[R, Any]:
        """Start this process's manager (the worker does it for you).

        Raises:
            RuntimeError: one already runs. tasker.ResourceCreationError: ``on_create``
                failed for the pool or the base workers.
        """
        if self._manager is not None:
            raise RuntimeError("tasker.contrib.celery: this process's TaskManager is already running")
        config = self._make_config()
        manager: TaskManager[R, Any] = TaskManager(config)
        self._config, self._manager = config, manager
        self._closed, self._killing, self._ended = False, False, Event()
        return manager

    def stop(self, timeout: float | None = None) -> bool:
        """Stop this process's manager gracefully (see :meth:`tasker.TaskManager.stop`).

        Returns True if it drained in time; True too if no manager runs.
        """
        self._stop_restorer()
        if self._manager is None:
            return True
        manager = self._take()
        if manager is None:
            self._ended.wait()
            return True
        try:
            clean = manager.stop(timeout)
        finally:
            self._over(manager)
        if not clean:
            logger.warning("tasker: the manager did not drain within %s s and was killed", timeout)
        return clean

    def kill(self) -> None:
        """Kill this process's manager: queued and running jobs fail with ``TaskKilledError``.

        Returns once every job of the manager has ended, also when another greenlet
        began the kill (or a stop).
        """
        self._stop_restorer()
        manager = self._manager
        if manager is None:
            return
        if self._killing:
            self._ended.wait()
            return
        self._killing = True
        self._closed = True
        try:
            manager.kill()  # escalates a stop() running in another greenlet
        except ManagerStoppedError:  # a stop() that finished first
            pass
        finally:
            self._over(manager)
        logger.info("tasker: killed this worker's TaskManager")

    def _over(self, manager: TaskManager[R, Any]) -> None:
        """``manager`` is stopped or killed: ``.manager`` says so, and ``start()`` may run again.

        The first of a stop() and the kill() that escalates it to end does it; the
        other must not touch a manager started since.
        """
        if self._manager is manager:
            self._manager = None
            self._ended.set()

    def _take(self) -> TaskManager[R, Any] | None:
        if self._closed:
            return None
        self._closed = True
        return self._manager

    def _stop_restorer(self) -> None:
        restorer, self._restorer = self._restorer, None
        if restorer is not None:
            restorer.stop()

    # -- worker hooks ------------------------------------------------------------------

    def _start_in_worker(self, hostname: str) -> None:
        try:
            self.start()
        except Exception as exc:
            cause = exc.__cause__ or exc
            message = f"tasker.contrib.celery: the TaskManager of worker {hostname} could not start: {cause!r}"
            logger.critical(message)
            raise RuntimeError(message) from exc
        if self._pool_kind == "gevent":
            green_cold_shutdown()
            restorer = Restorer(self.app, self._restore_interval)
            if restorer.start():
                self._restorer = restorer

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        # Sent after the worker's blueprint stopped, so after the pool joined its tasks.
        if getattr(sender, "app", None) is self.app and self._manager is not None:
            self.stop(self._stop_timeout)

    def _on_process_init(self, **_: Any) -> None:
        if self._pool_kind == "prefork":  # set by the bootstep in the parent, before the fork
            self._start_in_worker("prefork child")

    def _on_process_shutdown(self, **_: Any) -> None:
        if self._manager is not None:
            self.stop(self._stop_timeout)

    # -- running jobs ------------------------------------------------------------------

    def call(
        self,
        task: Any,
        fn: Task[R, E],
        *,
        timeout: float | None = None,
        priority: bool = False,
    ) -> E:
        """Run ``fn`` on this process's manager for the bound Celery ``task``.

        Returns ``fn``'s value; tasker's errors become what the failure table says
        (requeue, retry with backoff, or an ordinary failure).

        Args:
            task: the bound task (``self`` of ``@app.task(bind=True)``).
            fn: the job, run by a tasker worker with its resource: ``fn(ctx, resource)``
                or an object with ``execute(ctx, resource)``, as for ``submit``.
            timeout: seconds the job may run (``TaskTimeoutError`` after).
            priority: use the manager's priority lane.
        """
        box = Finished()
        job = box.wrap(task_fn(fn))
        try:
            reply = self.manager.submit(job, timeout=timeout, priority=priority)
        except Exception as exc:  # refused by our manager (stopped, full), or a bad argument
            self._reraise(task, exc, classify(exc))
        try:
            value: E = reply.get()
        except BaseException as exc:
            if exc is reply.exception:  # the job's outcome
                if self._killed_after(box, exc):
                    return box.value  # type: ignore[no-any-return]
                self._reraise(task, exc, box.kind(exc))
            if cold_shutdown_started():  # gevent's GreenletExit, or solo's failing handler (see _internals)
                self.kill()  # no job of a requeued message may still run here
                if box.done:
                    return box.value  # type: ignore[no-any-return]
                requeue(task, exc)
            # Thrown into the wait: Celery's time limits (a gevent.Timeout, or under prefork
            # SoftTimeLimitExceeded, an Exception), revoke(terminate=True)... The task
            # ends here, so the job must not run on, holding its resource.
            reply.cancel()
            raise
        settle_cold_kill()
        return value

    def _killed_after(self, box: Finished, exc: BaseException) -> bool:
        """Whether a job whose reply says it was killed did finish after all.

        ``kill()`` answers running jobs with ``TaskKilledError`` before their greenlets
        are dead, and a job can still finish in between. Once the kill is over, ``box``
        tells the truth; a job that did its work must not be requeued.
        """
        if not isinstance(exc, TaskKilledError) or exc is box.raised:
            return False
        if self._closed:  # our stop() or kill(): wait until it is over
            self._ended.wait()
        return box.done

    def _reraise(self, task: Any, exc: BaseException, kind: Kind) -> NoReturn:
        if kind == "requeue":
            requeue(task, exc)
        if kind == "retry":
            retry_later(task, exc, self._backoff)
        raise exc

    def batch_task(
        self,
        *,
        timeout: float | None = None,
        max_in_flight: int | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[[Context, R, Any], Any]], Any]:
        """Make a Celery task that runs ``fn(ctx, resource, item)`` for a list of items.

        One message carries many items, so the milliseconds Celery spends per message
        are paid once per batch. The task takes the items as its one argument and
        returns, in input order, ``{"ok": value}`` or ``{"error": "repr of the
        exception"}`` per item. Items the worker could not finish (shutdown, kill)
        are requeued alone in a new message (a retry with the remaining items), and
        items that failed with ``RetriesExhaustedError``/``ResourceCreationError`` are
        retried with backoff within ``max_retries``; the finished items' outcomes go
        along, so the final result has every item.

        Args:
            timeout: seconds (finite, > 0) each item may run.
            max_in_flight: items submitted ahead, an int >= 1 (default twice the
                manager's ``max_worker_count``).
            task_options: for ``app.task`` (``name``, ``acks_late``, ``max_retries``...).

        Raises:
            TypeError, ValueError: a bad ``timeout`` or ``max_in_flight``.
        """
        _check_seconds("batch_task timeout", timeout)
        if max_in_flight is not None:
            if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
                raise TypeError(f"batch_task max_in_flight must be None or an int >= 1, got {max_in_flight!r}")
            if max_in_flight < 1:
                raise ValueError(f"batch_task max_in_flight must be None or an int >= 1, got {max_in_flight!r}")

        def decorate(fn: Callable[[Context, R, Any], Any]) -> Any:
            def run(task: Any, items: list[Any], _tasker_batch: dict[str, Any] | None = None) -> list[Any]:
                return _batch.run(self, task, fn, items, _tasker_batch, timeout, max_in_flight)

            run.__name__ = getattr(fn, "__name__", "batch")
            run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
            run.__module__ = getattr(fn, "__module__", run.__module__)
            run.__doc__ = fn.__doc__
            return self.app.task(bind=True, **task_options)(run)

        return decorate

    def _read_ahead(self, max_in_flight: int | None) -> int:
        if max_in_flight is not None:
            return max_in_flight
        config = self._config
        if config is None:
            raise self._no_manager()  # never started here: say so before a batch begins
        return 2 * (config.max_worker_count or 2 * config.worker_count)


def _check_seconds(name: str, value: float | None) -> None:
    """Refuse a bad duration where it is given, not at shutdown where it would be used."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be None or a number of seconds, got {value!r}")
    if not seconds_ok(value):
        raise ValueError(f"{name} must be None or a finite number of seconds > 0, got {value!r}")


class Finished:
    """Whether a job's function returned, and its value, or what it raised itself: the
    truth when its reply cannot tell."""

    __slots__ = ("done", "raised", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.raised: Exception | None = None

    def wrap(self, fn: Callable[[Context, Any], Any]) -> Callable[[Context, Any], Any]:
        def job(ctx: Context, resource: Any) -> Any:
            try:
                value = fn(ctx, resource)
            except Exception as exc:
                self.raised = exc
                raise
            self.value, self.done = value, True
            return value

        return job

    def kind(self, exc: BaseException) -> Kind:
        """What the reply's ``exc`` means for the message.

        The job's own exception is an ordinary failure whatever its type: a
        ``ManagerStoppedError`` from another manager the job uses says nothing about
        this worker, and requeued it would come back forever. Only what this
        integration's manager says about the submission goes by :func:`classify`.
        (tasker interrupts a job with a BaseException and answers with an error of
        its own, so ``raised`` is never the manager's.)
        """
        return "fail" if exc is self.raised else classify(exc)


def settle_cold_kill() -> None:
    """Let a cold-shutdown kill already on its way land here, where a finished job is kept.

    Celery's cold shutdown picks the greenlets to kill (those whose request has not
    succeeded yet) and throws ``GreenletExit`` into them later. A greenlet whose job
    has just finished could otherwise be hit while it acks, and its message would run
    again. Yielding once here takes that throw while the success is still ours to
    keep; after this the request counts as succeeded and is spared.
    """
    if cold_shutdown_started():
        try:
            gevent.sleep(0)
        except gevent.GreenletExit:
            pass
