"""The scaler actor: burst workers that come under load and go when idle.

Every ``burst_interval`` (on the manager's clock) it reads the manager's own counters —
never the user's collector — and:

- **scales up** when messages wait, no worker is idle, and either work arrived at
  least as fast as it completed over the last interval or the backlog is larger than
  what completed in it (it would not clear within one more interval). It starts
  ``min(backlog - starting, room, ceil((max - base) / 2))`` burst workers, where
  ``starting`` counts workers still in ``on_create``: never the whole ceiling in one
  tick, yet at the ceiling within two ticks of a sustained step, and no new step
  until the last one's workers are up (the cooldown: a slow ``on_create`` does not
  make it overshoot);
- **scales down** the burst workers that have been parked for ``burst_linger``
  (default ``10 * burst_interval``). The idle stack is LIFO, so its bottom holds the
  workers idle longest: surplus workers age there while busy ones stay on top, and an
  on/off load shorter than the linger retires nobody.

It starts no worker while the supervisor's restart backoff is running. It keeps
scaling up during a graceful stop, so a large backlog drains as fast as it can; burst
workers started then exit with the others once the lanes are empty.
"""

from __future__ import annotations

import math

import gevent

from ._core import Core
from ._supervisor import Supervisor

__all__ = ["Scaler"]


class Scaler:
    """Spawns and retires burst workers."""

    def __init__(self, core: Core, supervisor: Supervisor, max_workers: int, interval: float, linger: float) -> None:
        self._core = core
        self._supervisor = supervisor
        self._max = max_workers
        self._step = math.ceil((max_workers - supervisor.base_count) / 2)
        self._interval = interval
        self._linger = linger
        self._arrived = 0
        self._done = 0
        self.closed = False  # set at teardown: kill() may come from a logger this greenlet ran
        self.greenlet = gevent.Greenlet(self._run)

    def _run(self) -> None:
        core = self._core
        sleep = core.clock.sleep
        interval = self._interval
        while not self.closed:
            try:
                sleep(interval)
            except BaseException as exc:  # a timer user code left behind (the logger's)
                core.survive(exc)
                continue
            self.tick()

    def tick(self) -> None:
        """One look at the load: start or retire burst workers."""
        core = self._core
        mailbox = core.mailbox
        supervisor = self._supervisor
        arrived, self._arrived = core.arrived - self._arrived, core.arrived
        done, self._done = core.done - self._done, core.done
        if core.killing:
            return
        backlog = mailbox.eligible()  # not the messages waiting for their key, a token or a retry
        if backlog and not (mailbox.idle or mailbox.idle_burst) and (arrived >= done or backlog > done):
            room = self._max - len(supervisor.workers) - supervisor.pending_restarts
            # Workers still creating their resource will take part of the backlog:
            # waiting for them is the cooldown that keeps a slow on_create from overshooting.
            count = min(backlog - supervisor.starting, room, self._step)
            if count > 0 and supervisor.may_start():
                for _ in range(count):
                    supervisor.start_worker(burst=True)
                core.log("info", "tasker: started %d burst workers (backlog %d)", count, backlog)
            return
        retired = mailbox.retire_idle_bursts(core.now() - self._linger)
        if retired:
            core.log("debug", "tasker: retired %d idle burst workers", retired)
