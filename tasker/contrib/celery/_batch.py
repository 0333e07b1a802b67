"""Batch jobs: one Celery message carries many items, run by this process's workers.

A Celery message costs milliseconds of CPU (a BRPOP and an ack), more than a small
network job. A batch pays it once for many items. The items are submitted to the
manager with bounded read-ahead, like ``imap_unordered``, but each reply is kept with
its item: a per-item ``timeout`` and the per-item outcome of tasker's own errors (a
timeout, a kill) need that, and ``imap_unordered`` yields bare outcomes.

An interrupted batch (shutdown, kill) is requeued with only its unfinished items; the
outcomes already known ride along in the message, so the final result has them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.queue import SimpleQueue

from ... import Context, TaskResult
from ._internals import cold_shutdown_started
from ._outcomes import Kind, classify, requeue, retry_later

if TYPE_CHECKING:
    from ._integration import Integration

__all__ = ["run"]


def _bind(fn: Callable[[Context, Any, Any], Any], item: Any) -> Callable[[Context, Any], Any]:
    return lambda ctx, resource: fn(ctx, resource, item)


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": repr(exc)}


def run(
    integration: Integration[Any],
    task: Any,
    fn: Callable[[Context, Any, Any], Any],
    items: list[Any],
    state: dict[str, Any] | None,
    timeout: float | None,
    max_in_flight: int | None,
) -> list[Any]:
    """Run one delivery of a batch task; see :meth:`Integration.batch_task`."""
    from ._integration import Finished, settle_cold_kill

    if state is None:
        total, indices, done = len(items), list(range(len(items))), {}
    else:
        total, indices = int(state["n"]), [int(i) for i in state["indices"]]
        done = {int(i): outcome for i, outcome in state["done"]}
    if len(indices) != len(items):
        raise ValueError(f"batch state names {len(indices)} items but the message carries {len(items)}")
    limit = integration._read_ahead(max_in_flight)
    todo = iter(zip(indices, items, strict=True))
    pending: dict[TaskResult, tuple[int, Any, Finished]] = {}
    finished: SimpleQueue[TaskResult] = SimpleQueue()
    unfinished: dict[int, tuple[Any, Kind, BaseException]] = {}

    def settle(reply: TaskResult, index: int, item: Any, box: Finished) -> None:
        if reply.successful():
            done[index] = {"ok": reply.value}
            return
        exc = reply.exception
        if box.done or integration._killed_after(box, exc):
            done[index] = {"ok": box.value}  # it finished while a kill was under way
            return
        kind = box.kind(exc)
        if kind == "fail":
            done[index] = _error(exc)
        else:
            unfinished[index] = (item, kind, exc)

    def refill() -> None:
        while len(pending) < limit:
            entry = next(todo, None)
            if entry is None:
                return
            index, item = entry
            box = Finished()
            try:
                reply = integration.manager.submit(box.wrap(_bind(fn, item)), timeout=timeout)
            except Exception as exc:  # stopped or full: this item and the rest wait for another worker
                if classify(exc) == "fail":
                    raise
                unfinished[index] = (item, "requeue", exc)
                for index, item in todo:
                    unfinished[index] = (item, "requeue", exc)
                return
            pending[reply] = (index, item, box)
            reply.rawlink(finished.put)

    try:
        refill()
        while pending:
            reply = finished.get()
            settle(reply, *pending.pop(reply))
            refill()
    except BaseException:
        if not cold_shutdown_started():  # whatever it throws: see Integration.call
            # Celery's time limits, revoke(terminate=True), ...: the task ends here, and
            # no item it submitted may run on (queued ones would even start later).
            for reply in pending:
                reply.cancel()
            raise
        integration.kill()  # every reply is resolved now; no item of this batch runs on
        for reply, entry in pending.items():
            settle(reply, *entry)
        for index, item in todo:
            unfinished[index] = (item, "requeue", gevent.GreenletExit("killed by the worker's cold shutdown"))
    else:
        settle_cold_kill()

    if unfinished:
        order = sorted(unfinished)
        remaining = [unfinished[i][0] for i in order]
        kinds = {unfinished[i][1] for i in order}
        exc = unfinished[order[0]][2]
        requeued = "requeue" in kinds
        if requeued or task.max_retries is None or task.request.retries < task.max_retries:
            carried = {"n": total, "indices": order, "done": [[i, done[i]] for i in sorted(done)]}
            options = {"args": (remaining,), "kwargs": {"_tasker_batch": carried}}
            if requeued:
                requeue(task, exc, **options)
            retry_later(task, exc, integration._backoff, **options)
        for index in order:  # retries used up: these items failed for good
            done[index] = _error(unfinished[index][2])
    return [done[i] for i in range(total)]
