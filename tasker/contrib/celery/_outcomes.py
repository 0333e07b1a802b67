"""What a tasker error means for the Celery message that carried the job.

===================================================  ==========================================
tasker outcome                                       Celery outcome
===================================================  ==========================================
``ManagerStoppedError``, ``TaskKilledError``,        *this worker cannot run it*: requeued for
``QueueFullError`` from this worker's manager        another worker: ``Reject(requeue=True)``
(the submission refused, or killed by our            with ``acks_late``, else a retry with no
shutdown), killed by a cold shutdown                 countdown, allowed past ``max_retries``
                                                     (it counts in ``request.retries``, so a
                                                     later backoff retry has one fewer left)
``RetriesExhaustedError``, ``ResourceCreationError``  a Celery retry with exponential backoff,
                                                     within the task's own ``max_retries``
the task's own exception, of any type (a tasker      an ordinary failure of the Celery task
error from another manager too);
``TaskTimeoutError``
===================================================  ==========================================
"""

from __future__ import annotations

import random
from typing import Any, Literal, NoReturn

from celery.exceptions import Reject  # type: ignore[import-untyped]

from ... import (
    ManagerStoppedError,
    QueueFullError,
    ResourceCreationError,
    RetriesExhaustedError,
    TaskKilledError,
)

__all__ = ["Backoff", "Kind", "classify", "requeue", "retry_later"]

Kind = Literal["requeue", "retry", "fail"]

REQUEUE: tuple[type[BaseException], ...] = (ManagerStoppedError, TaskKilledError, QueueFullError)
RETRY: tuple[type[BaseException], ...] = (RetriesExhaustedError, ResourceCreationError)


def classify(exc: BaseException) -> Kind:
    """``requeue`` (this worker cannot run it), ``retry`` (later, with backoff) or ``fail``."""
    if isinstance(exc, REQUEUE):
        return "requeue"
    if isinstance(exc, RETRY):
        return "retry"
    return "fail"


class Backoff:
    """Exponential backoff with equal jitter: ``base * 2**retries`` capped at ``cap`` seconds,
    of which the upper half is random, so retries of many jobs spread out."""

    def __init__(self, base: float, cap: float) -> None:
        if not base > 0 or not cap >= base:
            raise ValueError(f"retry backoff needs 0 < base <= cap, got base={base!r} cap={cap!r}")
        self.base = base
        self.cap = cap

    def countdown(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries + 1``."""
        ceiling = min(self.cap, self.base * 2.0 ** min(retries, 62))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def requeue(task: Any, exc: BaseException, **retry_options: Any) -> NoReturn:
    """Hand the message back to the broker for another worker; never returns.

    With ``acks_late`` the message was not acked yet: reject it with requeue. Without,
    it was acked on receipt, so a copy is published (a retry with no countdown); a
    shutdown must not use up the task's ``max_retries``, so the limit is raised by one.
    """
    if task.acks_late and not retry_options:
        raise Reject(exc, requeue=True)
    raise task.retry(exc=exc, countdown=0, max_retries=task.request.retries + 1, **retry_options)


def retry_later(task: Any, exc: BaseException, backoff: Backoff, **retry_options: Any) -> NoReturn:
    """A Celery retry after a backoff, within the task's own ``max_retries``; never returns.

    Past the limit, Celery raises ``exc`` itself: the task fails with it.
    """
    raise task.retry(exc=exc, countdown=backoff.countdown(task.request.retries), **retry_options)
