"""``python -m tasker demo``: runs in a subprocess, its summary, its exit status, Ctrl-C."""

from __future__ import annotations

import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from tasker import _demo

RUN_TIMEOUT = 30.0  # seconds; a healthy run takes one or two
STATUS = re.compile(r"^\s*\d+\.\ds \d+/\d+ \| workers \d+\+\d+ \(\d+ busy\) \|")


class Demo:
    """A demo subprocess; a thread reads its output so every wait can time out.

    Use it as a context manager: leaving the block kills the process if it still runs
    and closes its pipe.
    """

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasker", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, matches: Callable[[str], object], timeout: float = 10.0) -> str:
        """Block until a line of output matches; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no matching line in {timeout} s; output so far:\n{''.join(self.lines)}")
            if line is None:
                pytest.fail(f"the demo ended without a matching line:\n{''.join(self.lines)}")
            self.lines.append(line)
            if matches(line):
                return line

    def finish(self, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
        """Wait for the exit; return the exit status and the whole output."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return code, "".join(self.lines)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)


def run_demo(*args: str) -> tuple[int, str]:
    with Demo(*args) as demo:
        return demo.finish()


def read_terminal(fd: int, deadline: float) -> str:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail("the demo did not finish writing in time")
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side of the terminal is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def number(pattern: str, output: str) -> int:
    """The integer captured by ``pattern`` in the output."""
    found = re.search(pattern, output)
    assert found, f"{pattern!r} not in output:\n{output}"
    return int(found.group(1))


def check_accounting(output: str) -> None:
    """Every submission got a reply, every connection made was closed."""
    submitted = number(r"submitted (\d+) of", output)
    assert number(r"URLs, (\d+) replies", output) == submitted
    completed = number(r"completed (\d+)", output)
    failed = number(r"failed (\d+)", output)
    cancelled = number(r"cancelled (\d+)", output)  # dropped by kill(): not failures (the seed's meaning)
    assert completed + failed + cancelled == submitted
    opened = number(r"(\d+) opened \(on_create\)", output)
    assert opened > 0
    assert number(r"(\d+) closed \(on_destroy\)", output) == opened
    assert "all closed" in output


class TestRun:
    """A full run fetches every URL, retries resets, and closes every connection."""

    def test_flaky_run_retries_on_fresh_connections_and_exits_0(self) -> None:
        code, out = run_demo("--urls", "300", "--rate", "0", "--flaky-rate", "0.1", "--seed", "3")
        assert code == 0, out
        assert "submitted 300 of 300 URLs, 300 replies" in out
        check_accounting(out)
        retried = number(r"retried (\d+),", out)
        resets = number(r"(\d+) reset", out)
        assert retried == resets > 0  # each reset was retried on a fresh connection
        assert number(r"(\d+) opened", out) >= 8 + retried  # a new connection per retirement
        served_503 = number(r"(\d+) 503", out)
        assert 0 < number(r"transient retries (\d+)", out) <= served_503  # 503s retried after Retry-After
        assert number(r"peak \d+ base \+ (\d+) burst", out) > 0  # the backlog made it burst
        assert "after the last reply: stop() ran every queued fetch" in out

    def test_clean_server_means_no_failure_no_retry_and_plain_status_lines(self) -> None:
        args = ("--urls", "200", "--rate", "160", "--flaky-rate", "0", "--workers", "4", "--max-workers", "4")
        code, out = run_demo(*args)
        assert code == 0, out
        check_accounting(out)
        assert "completed 200, failed 0, cancelled 0, retried 0, transient retries 0, success rate 100.0%" in out
        assert number(r"(\d+) opened", out) == 4  # no worker was ever replaced
        status = [line for line in out.splitlines() if STATUS.match(line)]
        assert len(status) >= 2  # one a second when stdout is not a terminal, and a final one
        assert "\r" not in out and "\x1b" not in out

    def test_status_refreshes_in_place_on_a_tty(self) -> None:
        main, child = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasker", "demo", "--urls", "300", "--rate", "500"], stdout=child, stderr=child
        )
        os.close(child)
        try:
            out = read_terminal(main, time.monotonic() + RUN_TIMEOUT)
            code = proc.wait(timeout=RUN_TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
            os.close(main)
        assert code == 0, out
        assert out.count("\r\x1b[2K") >= 3  # carriage return + clear line, refreshed often
        check_accounting(out)


class TestCommandLine:
    """``--help`` documents the options; bad values are refused."""

    def test_help(self) -> None:
        code, out = run_demo("--help")
        assert code == 0, out
        for option in ("--urls", "--workers", "--max-workers", "--rate", "--flaky-rate", "--seed", "130"):
            assert option in out

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--flaky-rate", "2"], "between 0 and 1"),
            (["--urls", "0"], "must be >= 1"),
            (["--rate", "-1"], "must be a finite number >= 0"),
            (["--rate", "nan"], "must be a finite number >= 0"),  # regression: crashed the producer, exit 0
            (["--rate", "inf"], "must be a finite number >= 0"),
            (["--workers", "8", "--max-workers", "4"], "must be >= --workers"),
        ],
    )
    def test_bad_value_exits_2(self, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            _demo.parse_args(args)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err

    def test_defaults(self) -> None:
        opts = _demo.parse_args(["--workers", "5"])
        assert opts == _demo.Options(urls=3000, workers=5, max_workers=20, rate=1000.0, flaky_rate=0.04, seed=1)


class TestCtrlC:
    """The first SIGINT stops gracefully, the second kills; both exit 130 with nothing leaked."""

    def test_first_sigint_stops_gracefully(self) -> None:
        with Demo("--urls", "100000", "--rate", "1000") as demo:
            demo.wait_for(STATUS.match)
            demo.interrupt()
            code, out = demo.finish()
        assert code == _demo.EXIT_INTERRUPTED, out
        assert "^C stopping gracefully" in out
        assert "stop() ran every queued fetch" in out
        assert "killed" not in out
        assert number(r"submitted (\d+) of", out) < 100000  # it stopped submitting
        check_accounting(out)

    def test_second_sigint_kills(self) -> None:
        with Demo("--urls", "20000", "--rate", "0", "--workers", "2", "--max-workers", "2") as demo:
            demo.wait_for(STATUS.match)
            demo.interrupt()
            demo.wait_for(lambda line: "^C stopping gracefully" in line)
            demo.interrupt()
            code, out = demo.finish()
        assert code == _demo.EXIT_INTERRUPTED, out
        assert "^C killing" in out
        assert "kill() failed the queued and running fetches" in out
        assert number(r"(\d+) killed", out) > 10000  # the queue was dropped, not drained
        check_accounting(out)


class TestModule:
    """The module's parts: import has no side effect, the verdict, the server's fates."""

    def test_import_neither_patches_nor_imports_socket_users(self) -> None:
        probe = (
            "import sys, gevent.monkey, tasker.__main__, tasker._demo\n"
            "print(gevent.monkey.is_module_patched('socket'), 'http.client' in sys.modules, 'socket' in sys.modules)"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert done.stdout.split() == ["False", "False", "False"], done.stderr

    @pytest.mark.parametrize(
        ("missing", "leaked", "interrupted", "code"),
        [(0, 0, False, 0), (0, 0, True, 130), (1, 0, False, 1), (0, 2, True, 1)],
    )
    def test_exit_status(self, missing: int, leaked: int, interrupted: bool, code: int) -> None:
        assert _demo.Verdict(missing, leaked, interrupted).exit_code == code

    def test_fates_follow_the_seed_the_path_and_the_hit(self) -> None:
        paths = [f"/item/{i}" for i in range(200)] * 2
        first = [_demo.Site(7, 0.2).decide(p) for p in paths]
        site = _demo.Site(7, 0.2)
        again = [site.decide(p) for p in paths]
        assert [f.kind for f in again[:200]] == [f.kind for f in first[:200]]
        assert [f.kind for f in again[200:]] != [f.kind for f in again[:200]]  # a retry draws anew

    def test_flaky_rate_bounds(self) -> None:
        calm, wild = _demo.Site(1, 0.0), _demo.Site(1, 1.0)
        for i in range(300):
            assert calm.decide(f"/item/{i}").kind in (_demo.OK, _demo.SLOW)
            assert wild.decide(f"/item/{i}").kind in (_demo.RESET, _demo.UNAVAILABLE)
        assert wild.served[_demo.RESET] and wild.served[_demo.UNAVAILABLE]
        assert 10 <= calm.served[_demo.SLOW] <= 60  # about SLOW_SHARE of 300
