"""What the demo shows: the status line, in place on a terminal, and the closing summary."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

import attrs
import gevent

from .. import TaskManager

if TYPE_CHECKING:
    from http.client import HTTPConnection

    from ._fetch import Connections, Tally
    from ._options import Options
    from ._shutdown import Shutdown
    from ._site import Site

__all__ = ["LEGEND", "Display", "Peak", "show_status", "status_line", "summary"]

LEGEND = (
    "status: elapsed, replies/URLs | workers base+burst (busy) | queued main+priority lane (waiting out a"
    " Retry-After) | arrivals and successes per s | p95 task time | redeliveries+transient retries"
)


class Display:
    """Writes the status in place on a terminal, as plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream
        self.live = stream.isatty()
        self._status_shown = False  # a live status line is on screen, without newline

    def status(self, line: str) -> None:
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            self._write("\r\x1b[2K" + line[:width])  # back to column 0, clear the line
            self._status_shown = True
        else:
            self._write(line + "\n")

    def say(self, text: str) -> None:
        """Print ``text`` on lines of its own, keeping the last status on screen."""
        if self._status_shown:
            self._write("\n")
            self._status_shown = False
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:  # piped into `head`: carry on quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # no error at exit
            self._stream = None


@attrs.define
class Peak:
    """The most workers seen at once."""

    base: int = 0
    burst: int = 0


def status_line(manager: TaskManager[HTTPConnection, int], tally: Tally, total: int, elapsed: float) -> str:
    """One line (see ``LEGEND``), its most telling fields first, for narrow terminals."""
    stats = manager.stats()
    m = manager.metrics()
    return (
        f"{elapsed:5.1f}s {tally.answered}/{total} | workers {stats.base_workers}+{stats.burst_workers}"
        f" ({stats.busy_workers} busy)"
        f" | queued {stats.queued_tasks}+{stats.priority_tasks} ({stats.delayed_tasks} delayed)"
        f" | in {m.task_arrival_rate:.0f}/s out {m.task_completion_rate:.0f}/s"
        f" | p95 {m.p95_execution_time * 1000:.0f} ms | retried {m.total_tasks_retried}+{m.total_transient_retries}"
    )


def show_status(
    manager: TaskManager[HTTPConnection, int], tally: Tally, total: int, display: Display, peak: Peak
) -> None:
    """Refresh the status (10 times a second live, every second as plain lines); track the peak."""
    start = time.monotonic()
    next_line = start + 1.0
    while True:
        gevent.sleep(0.1)
        stats = manager.stats()
        peak.base = max(peak.base, stats.base_workers)
        peak.burst = max(peak.burst, stats.burst_workers)
        now = time.monotonic()
        if display.live or now >= next_line:
            display.status(status_line(manager, tally, total, now - start))
            next_line += 1.0


def summary(
    manager: TaskManager[HTTPConnection, int],
    tally: Tally,
    site: Site,
    connections: Connections,
    peak: Peak,
    opts: Options,
    shutdown: Shutdown,
    elapsed: float,
) -> Iterable[str]:
    """The closing report, line by line."""
    m = manager.metrics()
    outcomes = ", ".join(f"{count} {name}" for name, count in tally.outcomes.most_common())
    served = ", ".join(f"{count} {name}" for name, count in sorted(site.served.items()))
    leaked = connections.opened - connections.closed
    yield f"finished in {elapsed:.2f} s: submitted {tally.submitted} of {opts.urls} URLs, {tally.answered} replies"
    yield f"  replies     : {outcomes or 'none'}"
    yield (
        f"  metrics     : completed {m.total_tasks_completed}, failed {m.total_tasks_failed}, "
        f"cancelled {m.total_tasks_cancelled}, retried {m.total_tasks_retried}, "
        f"transient retries {m.total_transient_retries}, success rate {m.success_rate:.1%}, "
        f"p95 {m.p95_execution_time * 1000:.1f} ms, p99 {m.p99_execution_time * 1000:.1f} ms"
    )
    yield (
        f"  latency     : main lane {tally.mean_latency('main') * 1000:.1f} ms, "
        f"priority lane {tally.mean_latency('priority') * 1000:.1f} ms (mean, submission to reply)"
    )
    yield f"  workers     : {opts.workers} base, up to {opts.max_workers}; peak {peak.base} base + {peak.burst} burst"
    yield f"  shutdown    : {shutdown.describe()}"
    yield f"  stats()     : {manager.stats()}"
    yield f"  server      : {sum(site.served.values())} requests: {served}"
    yield (
        f"  connections : {connections.opened} opened (on_create), {connections.closed} closed (on_destroy)"
        f" -> {'all closed' if not leaked else f'{leaked} LEAKED'}"
    )
