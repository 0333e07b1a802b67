"""tasker: a gevent task manager built as actors.

Workers are greenlets that each own a resource (an HTTP session, a DB connection) made
by your ``on_create``; they take messages from a priority lane and a main lane. A
supervisor replaces workers whose resource went bad and redelivers their message; a
scaler starts burst workers under load and retires them when idle. Every submission
gets exactly one reply, no caller waits forever, and every resource is destroyed.

Quick use::

    import tasker

    config = tasker.Config(on_create=make_session, on_destroy=close_session, worker_count=8)
    with tasker.TaskManager(config) as manager:
        page = manager.queue_task(lambda ctx, session: session.get(url).text)
"""

import logging

from ._clock import Clock, MonotonicClock, TimerHandle
from ._config import Config
from ._context import Context
from ._errors import (
    CancelledError,
    ManagerStoppedError,
    QueueFullError,
    ResourceCreationError,
    RetriesExhaustedError,
    TaskerError,
    TaskKilledError,
    TaskTimeoutError,
)
from ._keys import KeyLimits
from ._manager import TaskManager
from ._message import TaskResult
from ._metrics import Collector
from ._ratelimit import RateLimit
from ._retry import RetryPolicy
from ._types import Logger, MetricsCollector, Tasker, TaskLifecycleTimestamps, TaskMetrics, TaskStats

__all__ = [
    "CancelledError",
    "Clock",
    "Collector",
    "Config",
    "Context",
    "KeyLimits",
    "Logger",
    "ManagerStoppedError",
    "MetricsCollector",
    "MonotonicClock",
    "QueueFullError",
    "RateLimit",
    "ResourceCreationError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "TaskKilledError",
    "TaskLifecycleTimestamps",
    "TaskManager",
    "TaskMetrics",
    "TaskResult",
    "TaskStats",
    "TaskTimeoutError",
    "Tasker",
    "TaskerError",
    "TimerHandle",
]

__version__ = "0.1.0"

logging.getLogger("tasker").addHandler(logging.NullHandler())
