"""Give back the ``unacked`` messages of dead workers while this worker is busy (Redis).

With ``acks_late`` on the Redis transport, a delivered message sits in the ``unacked``
hash until it is acked. If its worker dies (SIGKILL, OOM, power), only
``QoS.restore_visible`` moves it back to its queue, once it is older than the
``visibility_timeout``; kombu calls that only when a poll comes back empty, which a
busy gevent worker never sees. :class:`Restorer` calls it on a timer from a greenlet
of its own, on a connection of its own (kombu's public ``Connection`` and the Redis
channel's ``qos.restore_visible``). A Redis mutex already keeps two workers from
restoring the same message.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from gevent.event import Event

__all__ = ["Restorer", "restore_interval"]

logger = logging.getLogger("tasker.contrib.celery")


def restore_interval(visibility_timeout: float) -> float:
    """A quarter of the visibility timeout, between 0.5 s and 60 s."""
    return min(60.0, max(0.5, visibility_timeout / 4))


class Restorer:
    """A greenlet that calls ``restore_visible`` every ``interval`` seconds until stopped."""

    def __init__(self, app: Any, interval: float | None) -> None:
        self._app = app
        self._interval = interval
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> bool:
        """Start restoring if the broker is Redis; False (and nothing started) otherwise."""
        probe = self._app.connection_for_write()
        try:
            if probe.transport.driver_type != "redis":
                return False
        finally:
            probe.release()
        self._greenlet = gevent.spawn(self._run)
        return True

    def stop(self) -> None:
        """Stop the greenlet and close its connection."""
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.join(5)
            self._greenlet.kill()

    def _run(self) -> None:
        with self._app.connection_for_write() as connection:
            interval = self._interval
            while True:
                try:
                    channel = connection.default_channel
                    if interval is None:
                        interval = restore_interval(float(channel.visibility_timeout))
                    channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)
                except Exception as exc:  # the broker is away: kombu's own consumer reconnects; try again later
                    logger.warning("tasker: restoring unacked messages failed: %r", exc)
                    connection.close()
                if self._stopping.wait(interval if interval is not None else 1.0):
                    return
