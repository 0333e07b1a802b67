"""B11: draining a deep queue of no-op tasks, tasker against the bare actor pool.

Each implementation runs in a fresh child process (:func:`_drain`), so that its memory
per pending task is read on a clean heap: ``n`` no-op tasks are queued (nothing yields
while they are, so none runs), garbage is collected, then the timed part waits for
every reply while 8 workers drain the queue.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

import attrs

from .._config import Config
from .._manager import TaskManager
from ._impls import BARE, TASKER, BareActorPool, _child_env, _noop, _noop0
from ._memory import current_rss, peak_rss

__all__ = ["DrainResult", "drain_queue"]


@attrs.frozen
class DrainResult:
    """B11 for one implementation: ``tasks`` queued, then drained by ``workers``."""

    impl: str
    tasks: int
    seconds: float  # draining the whole queue
    pending_bytes: int  # RSS added by queueing the tasks (replies kept by the caller)
    peak_rss: int

    @property
    def per_task(self) -> float:
        return self.seconds / self.tasks

    @property
    def bytes_per_pending(self) -> float:
        return self.pending_bytes / self.tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("inf")


def _drain(impl: str, n: int, workers: int) -> dict[str, float]:
    """In a fresh process: queue ``n`` no-op tasks on ``impl``, then time draining them."""
    gc.collect()
    if impl == TASKER:
        config: Config[object] = Config(
            on_create=object, worker_count=workers, max_worker_count=workers, resource_pool_size=0
        )
        manager: TaskManager[object, None] = TaskManager(config)
        before = current_rss()
        submit = manager.submit
        replies = [submit(_noop) for _ in range(n)]
    else:
        pool = BareActorPool(workers)
        before = current_rss()
        submit0 = pool.submit
        replies = [submit0(_noop0) for _ in range(n)]
    gc.collect()
    pending = current_rss() - before
    start = time.perf_counter()
    for reply in replies:
        reply.get()
    seconds = time.perf_counter() - start
    if impl == TASKER:
        manager.stop()
    else:
        pool.close()
    return {"seconds": seconds, "pending": pending, "peak": peak_rss()}


def drain_queue(impl: str, n: int, workers: int = 8) -> DrainResult:
    """B11 for ``impl`` (tasker or the bare actor pool), in a child process."""
    if impl not in (TASKER, BARE):
        raise ValueError(f"impl must be {TASKER!r} or {BARE!r}, got {impl!r}")
    code = (
        f"import json; from tasker._bench._drain import _drain; print(json.dumps(_drain({impl!r}, {n:d}, {workers:d})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_child_env(), timeout=600
    ).stdout
    reply = json.loads(out.strip().splitlines()[-1])
    return DrainResult(impl, n, float(reply["seconds"]), int(reply["pending"]), int(reply["peak"]))
