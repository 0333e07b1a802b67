"""B7: the memory of idle tasker workers, next to that of plain parked greenlets.

Each kind is measured in a fresh child process (:func:`_park`), so that what the other
benchmarks allocated does not blur the reading.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import attrs
import gevent
from gevent.event import Event

from .._config import Config
from .._manager import TaskManager
from ._impls import _child_env
from ._memory import current_rss, peak_rss

__all__ = ["MemoryResult", "idle_memory"]


@attrs.frozen
class MemoryResult:
    """B7: RSS added by ``count`` parked tasker workers or plain greenlets."""

    kind: str  # "tasker" | "greenlet"
    count: int
    added: int  # bytes
    peak_rss: int

    @property
    def per_item(self) -> float:
        return self.added / self.count


def _park(kind: str, count: int) -> dict[str, int]:
    """In a fresh process: RSS added by ``count`` idle workers (or parked greenlets)."""
    gc.collect()
    before = current_rss()
    if kind == "tasker":
        config: Config[object] = Config(
            on_create=object, worker_count=count, max_worker_count=count, resource_pool_size=0
        )
        manager: TaskManager[object, None] = TaskManager(config)
        gevent.idle()
        parked = len(manager._mailbox.idle)
    else:
        event = Event()
        greenlets = [gevent.spawn(event.wait) for _ in range(count)]
        gevent.idle()
        parked = sum(1 for g in greenlets if g and not g.dead)
    gc.collect()
    added = current_rss() - before
    if parked != count:
        raise RuntimeError(f"only {parked} of {count} {kind} parked")
    peak = peak_rss()
    if kind == "tasker":
        manager.stop()
    else:
        event.set()
        gevent.joinall(greenlets)
    return {"added": added, "peak": peak}


def idle_memory(kind: str, count: int) -> MemoryResult:
    """B7 for ``kind`` ("tasker" or "greenlet"), measured in a child process for isolation."""
    if kind not in ("tasker", "greenlet"):
        raise ValueError(f"kind must be 'tasker' or 'greenlet', got {kind!r}")
    code = f"import json; from tasker._bench._idle import _park; print(json.dumps(_park({kind!r}, {count:d})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_child_env(), timeout=120
    ).stdout
    reply = json.loads(out.strip().splitlines()[-1])
    return MemoryResult(kind, count, int(reply["added"]), int(reply["peak"]))
