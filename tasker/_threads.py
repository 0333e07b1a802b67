"""Calls from other OS threads: handed to the manager's own thread, answered across threads.

A manager lives in the thread that made it: its actors are greenlets of that thread's
hub, and gevent objects are not shared between hubs. A call from another thread — a
``gevent.threadpool`` worker, or a plain ``threading.Thread`` in an unpatched process —
is run in a new greenlet of the manager's hub (``loop.run_callback_threadsafe``), and
the calling thread waits for its outcome on an ``AsyncResult``: in its own hub if it has
one (gevent lets a thread wait on an ``AsyncResult`` another sets), else on a native
lock (:func:`_wait_natively`), so that a thread with no hub is not given one. The
manager's thread must be running its event loop (blocked in any gevent wait) for the
hand-off to be served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import gevent
from gevent._hub_local import get_hub_if_exists  # gevent's own test for "this thread has a hub"
from gevent.event import AsyncResult
from gevent.monkey import get_original

from ._message import TaskResult

__all__ = ["ThreadTaskResult", "call_in_hub", "get_ident"]

get_ident: Callable[[], int] = get_original("_thread", "get_ident")  # the OS thread, even when patched
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")


def _wait_natively(hub: Any, result: AsyncResult, timeout: float | None = None) -> bool:
    """Block this OS thread, which has no gevent hub, until ``result`` (of ``hub``'s thread) is ready.

    A thread with no hub would get one from a gevent wait, and a hub that waited on
    another thread's ``AsyncResult`` is never freed when its thread ends (its loop and
    two file descriptors stay): a thread per request would run out of descriptors. A
    native lock, released by a link run in ``hub``'s thread, needs no hub here.
    Returns whether ``result`` is ready (False: ``timeout`` passed).
    """
    lock = _allocate_lock()
    lock.acquire()

    def release(_: Any) -> None:
        lock.release()

    hub.loop.run_callback_threadsafe(result.rawlink, release)
    ready: bool = lock.acquire(True, -1 if timeout is None else max(0.0, timeout))
    if not ready:
        hub.loop.run_callback_threadsafe(result.unlink, release)
    return ready


@contextmanager
def _loop_kept_alive() -> Iterator[None]:
    """Keep this thread's event loop running while it waits on another thread.

    gevent wakes a waiter in another hub through that hub's loop; a loop with nothing
    active would instead end the wait at once with ``LoopExit``. An idle async watcher
    keeps it running.
    """
    watcher = gevent.get_hub().loop.async_()
    watcher.start(_nothing)
    try:
        yield
    finally:
        watcher.close()


def _nothing() -> None:
    pass


def call_in_hub(hub: Any, fn: Callable[..., Any], *args: Any, withdraw: bool = False, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a greenlet of ``hub``'s thread; return or raise its outcome here.

    ``withdraw``: if this thread stops waiting (an exception thrown into its wait: its own
    ``gevent.Timeout``, say), the call is withdrawn in ``hub``'s thread (:func:`_withdraw`),
    as that exception would have withdrawn it there. Without it the call goes on.
    """
    outcome = AsyncResult()
    runner: list[gevent.Greenlet] = []

    def run() -> None:
        try:
            outcome.set(fn(*args, **kwargs))
        except BaseException as exc:
            outcome.set_exception(exc)

    native = get_hub_if_exists() is None
    with nullcontext() if native else _loop_kept_alive():
        hub.loop.run_callback_threadsafe(lambda: runner.append(gevent.spawn(run)))
        try:
            if native:
                _wait_natively(hub, outcome)
                return outcome.get(block=False)
            return outcome.get()
        except BaseException as exc:
            if withdraw and not (outcome.ready() and exc is outcome.exception):  # not fn's own error
                hub.loop.run_callback_threadsafe(_withdraw, runner, outcome)
            raise


def _withdraw(runner: list[gevent.Greenlet], outcome: AsyncResult) -> None:
    """In the manager's thread: the caller's thread gave up on the call ``runner`` runs.

    Still running (or not started), the call is killed where it blocks: a submission
    waiting for room is then not made, one whose collector blocks is withdrawn, a
    ``run_task`` task is interrupted. Already over, the submission it made is cancelled
    (a callback's gets ``CancelledError``), so no reply is left that nobody holds.
    """
    (greenlet,) = runner  # spawned by the callback before this one: they run in order
    if not greenlet.dead:
        greenlet.kill(block=False)
    elif outcome.successful() and isinstance(outcome.value, TaskResult):
        outcome.value.cancel()


class ThreadTaskResult(TaskResult):
    """The reply to a submission made from another thread: waiting on it works from any thread."""

    __slots__ = ()

    def wait(self, timeout: float | None = None) -> Any:
        if get_hub_if_exists() is None:
            self.ready() or _wait_natively(self._spec[3].hub, self, timeout)
            return self.value
        with _loop_kept_alive():
            return TaskResult.wait(self, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block:
            return TaskResult.get(self, block, timeout)
        if get_hub_if_exists() is None:
            if not (self.ready() or _wait_natively(self._spec[3].hub, self, timeout)):
                raise gevent.Timeout()  # what gevent's get() raises when its timeout passes (no timer: no hub)
            return TaskResult.get(self, False)
        with _loop_kept_alive():
            return TaskResult.get(self, block, timeout)

    def result(self, timeout: float | None = None) -> Any:
        return self.get(timeout=timeout)
