"""Ctrl-C: the first press stops the manager gracefully, the second kills it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from .. import ManagerStoppedError, TaskManager

if TYPE_CHECKING:
    from http.client import HTTPConnection

    from ._view import Display

__all__ = ["Shutdown"]


class Shutdown:
    """Ctrl-C: the first stops gracefully, the second kills; also the normal stop."""

    def __init__(self, manager: TaskManager[HTTPConnection, int], display: Display) -> None:
        self._manager = manager
        self._display = display
        self._stopper: gevent.Greenlet | None = None
        self.presses = 0
        self.stopped = Event()  # set when manager.stop() has returned

    @property
    def requested(self) -> bool:
        """Whether Ctrl-C was pressed: submit nothing more."""
        return self.presses > 0

    def on_sigint(self) -> None:
        """The SIGINT handler; gevent runs it in a greenlet of its own."""
        self.presses += 1
        if self.presses == 1:
            self._display.say("^C stopping gracefully: no new URLs, queued ones still run (^C again to kill)")
            self.stop()
        elif self.presses == 2:
            self._display.say("^C killing: queued and running fetches fail with TaskKilledError")
            try:
                self._manager.kill()
            except ManagerStoppedError:
                self._display.say("(the manager had already stopped)")

    def describe(self) -> str:
        """How the manager ended, once ``stop()`` has returned."""
        if self.presses >= 2:
            return "second ^C: kill() failed the queued and running fetches (TaskKilledError)"
        drained = self._stopper is not None and self._stopper.value is True
        when = "^C: " if self.presses else "after the last reply: "
        return when + ("stop() ran every queued fetch, then closed every connection" if drained else "stop() escalated")

    def stop(self) -> gevent.Greenlet:
        """Start ``manager.stop()`` in a greenlet, once; a later kill() escalates it."""
        if self._stopper is None:
            self._stopper = gevent.spawn(self._manager.stop)
            self._stopper.rawlink(lambda _: self.stopped.set())
        return self._stopper
