"""examples/gunicorn_app under real gunicorn gevent workers: a manager per process, clean shutdown.

The test process stays unpatched: the upstream server and the clients are OS threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "gunicorn_app"
REQUESTS = 300
FLAKY = range(7, REQUESTS, 50)  # items whose first request the upstream drops unanswered
SLOW = range(1000, 1010)  # items the upstream takes SLOW_SECONDS to answer
SLOW_SECONDS = 0.5


class Upstream(BaseHTTPRequestHandler):
    """Answers ``/item/<n>`` with ``item <n>`` on keep-alive connections; drops flaky items once."""

    protocol_version = "HTTP/1.1"
    server: UpstreamServer

    def setup(self) -> None:
        super().setup()
        self.server.count("connections")

    def do_GET(self) -> None:
        item = int(self.path.rsplit("/", 1)[-1])
        if item in FLAKY and self.server.first_request(item):
            self.server.count("dropped")
            self.close_connection = True  # no answer: the client sees the connection die
            return
        if item in SLOW:
            self.server.count("slow")
            time.sleep(self.server.slow_seconds)
        else:
            time.sleep(0.002)  # long enough for requests to pile up and workers to burst
        body = f"item {item}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Upstream)
        self.counts: dict[str, int] = {"connections": 0, "dropped": 0, "slow": 0}
        self.slow_seconds = SLOW_SECONDS
        self._lock = threading.Lock()
        self._seen: set[int] = set()

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def first_request(self, item: int) -> bool:
        with self._lock:
            first = item not in self._seen
            self._seen.add(item)
            return first


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:  # 502, 503: the app's answer all the same
        return error.code, json.loads(error.read())


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; gunicorn said:\n{log.read_text()}")


@contextlib.contextmanager
def gunicorn(
    upstream: UpstreamServer, tmp_path: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, Path]]:
    """examples/gunicorn_app under a real gunicorn master (extra ``args``): (master, port,
    records, log) once both workers have started; the master is gone when it ends."""
    records = tmp_path / "records"
    records.mkdir()
    log = tmp_path / "gunicorn.log"
    # gunicorn listens on a socket we bound to an ephemeral port: no port race.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    env = dict(
        os.environ,
        TASKER_EXAMPLE_UPSTREAM=f"127.0.0.1:{upstream.server_port}",
        TASKER_EXAMPLE_RECORDS=str(records),
        XDG_RUNTIME_DIR=str(tmp_path),  # where gunicorn >= 25.1 puts its control socket
    )
    env.pop("GUNICORN_CMD_ARGS", None)
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"fd://{listener.fileno()}", *args]
    with log.open("w") as out:
        master = subprocess.Popen(
            [*cmd, "app:app"], cwd=APP_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()], start_new_session=True,
        )  # fmt: skip
    listener.close()
    try:
        wait_until(lambda: len(list(records.glob("*.started"))) == 2, 15, "two workers", log)
        yield master, port, records, log
    finally:
        if master.poll() is None:  # failed: take the workers down with the master
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()


class TestGunicornGeventWorkers:
    """Two gevent workers each serve through their own manager and stop it cleanly on SIGTERM."""

    def test_serve_then_graceful_shutdown(self, upstream: UpstreamServer, tmp_path: Path) -> None:
        with gunicorn(upstream, tmp_path) as (master, port, records, log):
            status, data = get(f"http://127.0.0.1:{port}/healthz")
            assert status == 200
            workers = {int(p.stem) for p in records.glob("*.started")}
            assert {c.pid for c in psutil.Process(master.pid).children()} == workers

            with ThreadPoolExecutor(max_workers=40) as pool:
                answers = list(pool.map(get, [f"http://127.0.0.1:{port}/fetch/{i}" for i in range(REQUESTS)]))
            for i, (status, data) in enumerate(answers):
                assert status == 200, data
                assert data["upstream"] == f"item {i}"
                assert data["pid"] in workers

            # SIGTERM while requests are in flight: they still get their answers.
            with ThreadPoolExecutor(max_workers=len(SLOW)) as pool:
                slow = [pool.submit(get, f"http://127.0.0.1:{port}/fetch/{i}") for i in SLOW]
                wait_until(lambda: upstream.counts["slow"] == len(SLOW), 10, "slow requests", log)
                master.send_signal(signal.SIGTERM)
                for i, future in zip(SLOW, slow, strict=True):
                    status, data = future.result()
                    assert status == 200 and data["upstream"] == f"item {i}", data
            assert master.wait(timeout=15) == 0, log.read_text()

        assert not [pid for pid in workers if psutil.pid_exists(pid)]
        output = log.read_text()
        assert "Traceback" not in output and "did not drain" not in output, output
        stopped = {pid: json.loads((records / f"{pid}.json").read_text()) for pid in workers}
        for pid, record in stopped.items():
            assert record["pid"] == pid
            assert record["drained"] is True, record
            assert record["created"] == record["destroyed"] > 0, record
            assert record["failed"] == 0, record
        assert sum(r["served"] for r in stopped.values()) == REQUESTS + len(SLOW)
        # Dropped connections were retired and replaced, and their requests retried.
        assert upstream.counts["dropped"] == len(FLAKY)
        assert sum(r["retried"] for r in stopped.values()) == len(FLAKY)

    def test_work_that_outlasts_graceful_timeout_is_answered_and_closed(
        self, upstream: UpstreamServer, tmp_path: Path
    ) -> None:
        """Regression: the manager was stopped only in worker_exit, after gunicorn had waited
        for requests blocked on their tasks; the master SIGKILLed the workers first, so no
        caller was answered and no connection closed. The stop now begins at the SIGTERM."""
        upstream.slow_seconds = 6.0  # longer than graceful_timeout
        with gunicorn(upstream, tmp_path, "--graceful-timeout", "3") as (master, port, records, log):
            workers = {int(p.stem) for p in records.glob("*.started")}
            with ThreadPoolExecutor(max_workers=len(SLOW)) as pool:
                slow = [pool.submit(get, f"http://127.0.0.1:{port}/fetch/{i}") for i in SLOW]
                wait_until(lambda: upstream.counts["slow"] == len(SLOW), 10, "slow requests", log)
                master.send_signal(signal.SIGTERM)
                answers = [future.result() for future in slow]
            assert master.wait(timeout=15) == 0, log.read_text()
        assert all(status == 502 and "TaskKilledError" in str(data["error"]) for status, data in answers), answers
        assert log.read_text().count("did not drain") == 2
        stopped = [json.loads((records / f"{pid}.json").read_text()) for pid in workers]
        for record in stopped:
            assert record["drained"] is False, record
            assert record["created"] == record["destroyed"] > 0, record
        assert sum(r["failed"] for r in stopped) == len(SLOW)
