"""The flaky local HTTP server: each request gets a fate, a delay then OK, reset or 503
(with ``Retry-After``).

Fates are drawn from the seed, the path and how often that path was asked for, so a
run is reproducible. ``socket`` and ``gevent.pywsgi`` are imported inside
:func:`serve`, after ``patch_all()``.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import gevent

__all__ = ["HOST", "OK", "RESET", "SLOW", "UNAVAILABLE", "Fate", "Site", "serve"]

HOST = "127.0.0.1"
SLOW_SHARE = 0.1  # share of requests that take SLOW_DELAY instead of FAST_DELAY
FAST_DELAY = (0.002, 0.012)  # seconds, uniform
SLOW_DELAY = (0.05, 0.12)  # seconds, uniform

OK, SLOW, RESET, UNAVAILABLE = "ok", "slow", "reset", "503"
FATE_KEY = "tasker.demo.fate"
RETRY_AFTER = 1  # seconds, in the Retry-After header of a 503 (HTTP allows whole seconds)


@attrs.frozen
class Fate:
    """What the server does with one request: wait ``delay`` seconds, then ``kind``."""

    kind: str
    delay: float


class Site:
    """The server's behaviour: a fate per request, and the WSGI app that answers."""

    def __init__(self, seed: int, flaky_rate: float) -> None:
        self._seed = seed
        self._flaky_rate = flaky_rate
        self._hits: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # requests per fate kind

    def decide(self, path: str) -> Fate:
        """The fate of this request: a function of the seed, the path and its hit count."""
        self._hits[path] += 1
        rng = random.Random(f"{self._seed}:{path}:{self._hits[path]}")
        draw = rng.random()
        if draw < self._flaky_rate / 2:
            kind = RESET
        elif draw < self._flaky_rate:
            kind = UNAVAILABLE
        else:
            kind = SLOW if rng.random() < SLOW_SHARE else OK
        fate = Fate(kind, rng.uniform(*(SLOW_DELAY if kind == SLOW else FAST_DELAY)))
        self.served[kind] += 1
        return fate

    def app(self, environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
        """The WSGI application: 503 or 200 as the request's fate says."""
        fate: Fate = environ[FATE_KEY]
        headers = [("Content-Type", "text/plain")]
        if fate.kind == UNAVAILABLE:
            status, body = "503 Service Unavailable", b"busy, try again later\n"
            headers.append(("Retry-After", str(RETRY_AFTER)))
        else:
            status, body = "200 OK", f"this is {environ['PATH_INFO']}\n".encode()
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def serve(site: Site) -> Any:
    """Start a WSGI server for ``site`` on an ephemeral port of 127.0.0.1; return it."""
    # Imported here, after patch_all(): gevent.pywsgi imports socket, ssl and http.client.
    import socket

    from gevent.pywsgi import WSGIHandler, WSGIServer

    class FlakyHandler(WSGIHandler):  # type: ignore[misc]  # gevent ships no stubs
        """Applies the request's fate: a delay, then a connection reset or the app."""

        def handle(self) -> None:
            # pywsgi sends the headers and the body in two writes: without NODELAY,
            # Nagle's algorithm holds the body until the client's delayed ACK (~40 ms).
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()

        def run_application(self) -> None:
            fate = site.decide(self.path)
            gevent.sleep(fate.delay)
            if fate.kind == RESET:
                # Linger 0: closing sends a TCP RST, so the client's read fails (ECONNRESET).
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.environ[FATE_KEY] = fate
            super().run_application()

        def log_request(self) -> None:
            """No access log: thousands of lines would bury the status."""

    server = WSGIServer((HOST, 0), site.app, handler_class=FlakyHandler, log=None)
    server.start()
    return server
