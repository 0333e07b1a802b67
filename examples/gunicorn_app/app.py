"""A WSGI app for ``gunicorn -k gevent``: one tasker manager per worker process.

Run it from this directory, with an HTTP server to proxy to::

    TASKER_EXAMPLE_UPSTREAM=127.0.0.1:8080 gunicorn -c gunicorn.conf.py app:app
    curl http://127.0.0.1:8000/fetch/42

``GET /fetch/<item>`` asks the upstream server for ``/item/<item>`` through a task: each
of the manager's workers owns one keep-alive ``http.client`` connection, so the process
holds at most ``max_worker_count`` upstream connections however many requests arrive.
A connection that breaks (``OSError``, ``HTTPException``) makes its worker unhealthy: the
supervisor closes it, opens a new one and retries the request.

The manager is made after gunicorn forks — :func:`start` runs in the
``post_worker_init`` hook (or lazily at the first request) — never at import: its
greenlets and sockets must belong to the worker process, and gunicorn's gevent worker
monkey-patches only after the fork. The ``worker_exit`` hook calls :func:`stop`, which
drains the manager within gunicorn's graceful timeout and closes every connection.

With ``TASKER_EXAMPLE_RECORDS`` set to a directory, each worker process writes
``<pid>.started`` when its manager starts and ``<pid>.json`` when it has stopped: whether
it drained cleanly, how many connections it opened and closed, how many requests it
served and how many tasks were retried on a new connection.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import tasker

UPSTREAM = os.environ.get("TASKER_EXAMPLE_UPSTREAM", "127.0.0.1:8080")
RECORDS = os.environ.get("TASKER_EXAMPLE_RECORDS")
KILL_TIMEOUT = 1.0  # seconds a stop() that escalated waits for interrupted tasks (gunicorn.conf.py counts it)

_manager: tasker.TaskManager[http.client.HTTPConnection, bytes] | None = None
_stopped = False
_lock = threading.Lock()  # a gevent lock once gunicorn has monkey-patched
_counts = {"created": 0, "destroyed": 0, "served": 0, "failed": 0}


class UpstreamError(Exception):
    """The upstream answered, but not with 200: the connection itself is fine."""


def _connect() -> http.client.HTTPConnection:
    host, port = UPSTREAM.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    _counts["created"] += 1
    return connection


def _close(connection: http.client.HTTPConnection) -> None:
    connection.close()
    _counts["destroyed"] += 1


def _healthy(exc: BaseException) -> bool:
    # A broken socket or a garbled response means this connection is bad: replace it.
    return not isinstance(exc, (OSError, http.client.HTTPException))


def start() -> tasker.TaskManager[http.client.HTTPConnection, bytes]:
    """This process's manager, made on first use (``post_worker_init`` calls it)."""
    global _manager
    with _lock:
        if _stopped:
            raise tasker.ManagerStoppedError("this worker is shutting down")
        if _manager is None:
            config = tasker.Config(
                on_create=_connect,
                on_destroy=_close,
                check_health=_healthy,
                worker_count=4,
                max_worker_count=16,
                resource_pool_size=0,  # no run_task here
                max_retries=3,
                task_timeout=10.0,
                kill_timeout=KILL_TIMEOUT,
            )
            _manager = tasker.TaskManager(config)
            _record("started", {"pid": os.getpid()})
        return _manager


def stop(timeout: float) -> bool | None:
    """Stop this process's manager: drain for ``timeout`` seconds, then kill.

    Returns whether it drained cleanly, or None if this process never made one (the
    gunicorn master calls ``worker_exit`` too when it reaps a vanished worker).
    """
    global _manager, _stopped
    with _lock:
        manager, _manager, _stopped = _manager, None, True
    if manager is None:
        return None
    drained = manager.stop(timeout=timeout)
    retried = manager.metrics().total_tasks_retried
    _record("json", {"pid": os.getpid(), "drained": drained, "retried": retried, **_counts})
    return drained


def _record(suffix: str, data: dict[str, Any]) -> None:
    if RECORDS:
        with open(os.path.join(RECORDS, f"{os.getpid()}.{suffix}"), "w") as f:
            json.dump(data, f)


def fetch(path: str) -> Callable[[tasker.Context, http.client.HTTPConnection], bytes]:
    """A task: GET ``path`` on the worker's own upstream connection."""

    def task(ctx: tasker.Context, connection: http.client.HTTPConnection) -> bytes:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()  # read it all so the connection can be reused
        if response.status != 200:
            raise UpstreamError(f"upstream answered {response.status} for {path}")
        return body

    return task


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI application."""
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _reply(start_response, "200 OK", {"pid": os.getpid()})
    if not path.startswith("/fetch/"):
        return _reply(start_response, "404 Not Found", {"error": "not found"})
    item = path[len("/fetch/") :]
    try:
        body = start().queue_task(fetch(f"/item/{item}"))
    except tasker.ManagerStoppedError:
        return _reply(start_response, "503 Service Unavailable", {"error": "shutting down"})
    except (tasker.TaskerError, UpstreamError, OSError, http.client.HTTPException) as exc:
        _counts["failed"] += 1
        return _reply(start_response, "502 Bad Gateway", {"error": repr(exc)})
    _counts["served"] += 1
    return _reply(start_response, "200 OK", {"pid": os.getpid(), "upstream": body.decode()})


def _reply(start_response: Callable[..., Any], status: str, data: dict[str, Any]) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
