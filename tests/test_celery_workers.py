"""tasker.contrib.celery under real ``celery worker -P gevent`` processes and a real Redis.

Each test starts its own ``redis-server`` (a free port, no persistence, a temp dir) and
two workers of ``tests/celery_app``, sends single jobs and batches, stops one worker
mid-run with a signal and checks, from the records the jobs and resources write:
every job done once (at least once where Redis's own gap allows, counted), nothing
left in the queue or in ``unacked``, every resource destroyed once, the exit codes.

Without ``redis-server`` on PATH the tests skip, unless ``TASKER_REQUIRE_BROKER=1``
(as in ``.ci/run``). ``TASKER_CELERY_JOBS`` sets the number of single jobs (default
300); ``-m deep`` runs the 10,000-job version. The test process stays unpatched.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

APP_DIR = Path(__file__).resolve().parent / "celery_app"
REDIS_SERVER = shutil.which("redis-server")
JOBS = int(os.environ.get("TASKER_CELERY_JOBS", "300"))
DEEP_JOBS = 10_000
BATCHES, BATCH_SIZE = 10, 40
CONCURRENCY = 50
VISIBILITY = 4.0  # seconds: a SIGKILLed worker's messages come back soon, live ones (ms) never

if REDIS_SERVER is None and os.environ.get("TASKER_REQUIRE_BROKER") == "1":
    raise RuntimeError("TASKER_REQUIRE_BROKER=1 but redis-server is not on PATH")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, logs: list[Path] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    said = "\n".join(f"--- {log}:\n{log.read_text()[-4000:]}" for log in logs or [] if log.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{said}")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port, without persistence; stopped afterwards."""
    import redis

    assert REDIS_SERVER is not None
    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(5):  # the port may be taken between free_port() and the bind
        port = free_port()
        server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        if server.poll() is None:
            break
    else:
        raise AssertionError("could not start redis-server")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


class Cluster:
    """Celery workers of tests/celery_app on one queue, and what their jobs recorded."""

    def __init__(self, redis_url: str, records: Path, queue: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.records = records
        self.queue = queue
        self.env = dict(
            os.environ,
            TASKER_TEST_BROKER=redis_url,
            TASKER_TEST_RECORDS=str(records),
            TASKER_TEST_VISIBILITY=str(VISIBILITY),
            PYTHONPATH=os.pathsep.join([str(APP_DIR), os.environ.get("PYTHONPATH", "")]),
            C_FORCE_ROOT="1",
        )
        self.workers: list[Worker] = []

    def start(
        self, count: int, pool: str = "gevent", extra_env: dict[str, str] | None = None, concurrency: int = CONCURRENCY
    ) -> list[Worker]:
        """Start ``count`` workers at once; wait until each says it is ready."""
        env = dict(self.env, **(extra_env or {}))
        started = []
        for _ in range(count):
            name = f"w{len(self.workers) + 1}@{self.queue}"
            log = self.records / f"{name}.log"
            cmd = [sys.executable, "-m", "celery", "-A", "celery_testapp", "worker", "-P", pool,
                   "-c", str(concurrency), "-Q", self.queue, "-n", name, "-l", "INFO",
                   "--without-heartbeat", "--without-gossip", "--without-mingle"]  # fmt: skip
            with log.open("w") as out:
                process = subprocess.Popen(cmd, cwd=APP_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
            worker = Worker(name, process, log)
            self.workers.append(worker)
            started.append(worker)
        return started

    def wait_ready(self, workers: list[Worker]) -> None:
        logs = [w.log for w in workers]
        wait_until(lambda: all(" ready." in w.log.read_text() for w in workers), 30, "the workers", logs)

    def send(self, jobs: int, batches: int) -> None:
        """Send ``jobs`` single jobs, then ``batches`` batches of BATCH_SIZE items."""
        from celery import Celery  # type: ignore[import-untyped]

        client = Celery("client", broker=self.env["TASKER_TEST_BROKER"])
        with client.producer_or_acquire() as producer:
            for n in range(jobs):
                client.send_task("celery_testapp.job", (n,), queue=self.queue, producer=producer)
            for b in range(batches):
                items = list(range(b * BATCH_SIZE, (b + 1) * BATCH_SIZE))
                client.send_task("celery_testapp.items", (items,), queue=self.queue, producer=producer)

    def counts(self, kind: str) -> Counter[int]:
        counted: Counter[int] = Counter()
        for path in self.records.glob(f"*.{kind}"):
            counted.update(int(line) for line in path.read_text().split())
        return counted

    def left_in_broker(self) -> dict[str, int]:
        """Messages still waiting (every priority sub-queue too) or unacked."""
        waiting = sum(int(self.redis.llen(key)) for key in self.redis.scan_iter(f"{self.queue}*"))
        return {"queued": waiting, "unacked": int(self.redis.hlen("unacked"))}

    def resources(self, pid: int) -> tuple[Counter[str], Counter[str]]:
        """Resources ``pid`` created and destroyed, by id."""
        created: Counter[str] = Counter()
        destroyed: Counter[str] = Counter()
        path = self.records / f"{pid}.res"
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, resource = line.split()
            (created if kind == "c" else destroyed)[resource] += 1
        return created, destroyed

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(10)


def in_cluster(redis_url: str, records: Path, queue: str, run: Callable[[Cluster], Any]) -> Any:
    """``run(cluster)`` on a cluster with its own queue and its own Redis database."""
    cluster = Cluster(redis_url, records, queue)
    cluster.redis.flushdb()
    try:
        return run(cluster)
    finally:
        cluster.stop_all()


# Celery's own exit codes: a warm or a cold shutdown ends with 0 (Celery >= 5.5).
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGQUIT: 0, signal.SIGKILL: -signal.SIGKILL}


def run_case(cluster: Cluster, sig: signal.Signals, jobs: int) -> dict[str, Any]:
    """Two workers, ``jobs`` single jobs and the batches; ``sig`` to one worker mid-run."""
    victim, survivor = workers = cluster.start(2)
    cluster.wait_ready(workers)
    logs = [w.log for w in workers]
    items = BATCHES * BATCH_SIZE
    cluster.send(jobs, BATCHES)
    wait_until(lambda: sum(cluster.counts("done").values()) >= jobs // 3, 60, "a third of the jobs", logs)
    os.kill(victim.pid, sig)
    done_before = cluster.counts("done")
    assert victim.process.wait(30) == EXIT_CODES[sig], victim.log.read_text()[-4000:]

    empty = {"queued": 0, "unacked": 0}
    seen_empty = [False]

    def finished() -> bool:
        # With acks_late a message leaves Redis only once its job has run (or to go back
        # to its queue, atomically): an empty broker, twice in a row, means all ran.
        was, seen_empty[0] = seen_empty[0], cluster.left_in_broker() == empty
        return was and seen_empty[0]

    wait_until(finished, 60 + (jobs / 100), "an empty queue and no unacked messages", logs)
    survivor.process.send_signal(signal.SIGTERM)
    assert survivor.process.wait(30) == 0, survivor.log.read_text()[-4000:]

    done, item_runs = cluster.counts("done"), cluster.counts("items")
    assert cluster.left_in_broker() == empty
    lost_jobs = set(range(jobs)) - set(done)
    lost_batches = {item // BATCH_SIZE for item in set(range(items)) - set(item_runs)}
    # The signal really hit a worker with work in flight, and the other took over.
    assert 0 < len(done_before) < jobs
    assert cluster.records.joinpath(f"{survivor.pid}.done").exists()
    for worker in workers:
        if worker is victim and sig == signal.SIGKILL:
            continue
        created, destroyed = cluster.resources(worker.pid)
        assert created and created == destroyed and set(destroyed.values()) == {1}, (worker.name, created, destroyed)
        log = worker.log.read_text()
        assert "Too many connections" not in log and "did not drain" not in log, log[-4000:]
    return {
        "lost_messages": len(lost_jobs) + len(lost_batches),
        "duplicated_jobs": sum(n - 1 for n in done.values()),
        "duplicated_items": sum(n - 1 for n in item_runs.values()),
    }


SIGNALS = {"sigterm": signal.SIGTERM, "sigquit": signal.SIGQUIT, "sigkill": signal.SIGKILL}


def refusals_and_prefork(cluster: Cluster) -> None:
    """A failing on_create and the threads pool end their workers with a reason; under
    prefork each child runs its own manager."""
    (failing,) = cluster.start(1, extra_env={"TASKER_TEST_FAIL_CREATE": "1"})
    (threads,) = cluster.start(1, pool="threads")
    (prefork,) = cluster.start(1, pool="prefork", concurrency=2)
    assert failing.process.wait(30) != 0
    assert threads.process.wait(30) != 0
    said = failing.log.read_text()
    assert "the TaskManager of worker" in said and "could not start" in said, said[-4000:]
    assert "the test's on_create always fails" in said, said[-4000:]
    said = threads.log.read_text()
    assert "tasker.contrib.celery cannot serve the 'thread' pool" in said, said[-4000:]

    cluster.wait_ready([prefork])
    cluster.send(40, 1)
    wait_until(lambda: len(cluster.counts("done")) == 40 and len(cluster.counts("items")) == BATCH_SIZE,
               30, "the prefork jobs", [prefork.log])  # fmt: skip
    prefork.process.send_signal(signal.SIGTERM)
    assert prefork.process.wait(30) == 0
    children = {int(p.stem) for p in cluster.records.glob("*.res")}
    assert len(children) == 2 and prefork.pid not in children  # a manager per child, none in the parent
    for pid in children:
        created, destroyed = cluster.resources(pid)
        assert created and created == destroyed and set(destroyed.values()) == {1}


@pytest.fixture(scope="module")
def default_cases(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Any]]]:
    """The three default cases and the start-up checks, run at once: most of their time
    is waiting for workers to start and stop, so together they take about as long as one."""
    runs: dict[str, Callable[[Cluster], Any]] = {
        name: functools.partial(run_case, sig=sig, jobs=JOBS) for name, sig in SIGNALS.items()
    }
    runs["refusals"] = refusals_and_prefork
    with ThreadPoolExecutor(len(runs)) as executor:
        yield {
            name: executor.submit(in_cluster, f"{redis_url}/{db}", tmp_path_factory.mktemp(name), name, run)
            for db, (name, run) in enumerate(runs.items(), start=1)
        }


def check(name: str, outcome: dict[str, Any], jobs: int) -> None:
    print(f"{name}, {jobs} jobs + {BATCHES * BATCH_SIZE} items: {outcome}")
    if name != "sigkill":
        assert outcome == {"lost_messages": 0, "duplicated_jobs": 0, "duplicated_items": 0}
    else:
        # Redis's two-step gap: a worker killed between BRPOP taking a message and kombu
        # writing it to ``unacked`` loses that one message; RabbitMQ would not.
        assert outcome["lost_messages"] <= 1
        # A SIGKILL between a job's work and its ack runs it again elsewhere; a killed
        # batch runs whole again: at least once, never more than was in flight.
        assert outcome["duplicated_jobs"] <= CONCURRENCY
        assert outcome["duplicated_items"] <= CONCURRENCY * BATCH_SIZE


class TestShutdownOfOneOfTwoWorkers:
    """Jobs and batch items survive a warm, a cold and a killed shutdown of one of two workers."""

    @pytest.mark.parametrize("name", list(SIGNALS))
    def test_no_job_lost(self, default_cases: dict[str, Future[Any]], name: str) -> None:
        check(name, default_cases[name].result(timeout=180), JOBS)

    @pytest.mark.deep
    @pytest.mark.parametrize("name", list(SIGNALS))
    def test_no_job_lost_10k(self, redis_url: str, tmp_path: Path, name: str) -> None:
        outcome = in_cluster(
            f"{redis_url}/6", tmp_path, f"deep-{name}", lambda cluster: run_case(cluster, SIGNALS[name], DEEP_JOBS)
        )
        check(name, outcome, DEEP_JOBS)


class TestWorkerStart:
    """A worker whose on_create fails, or with a pool tasker cannot serve, exits non-zero and says why;
    under prefork each child runs its own manager."""

    def test_refusals_and_prefork(self, default_cases: dict[str, Future[Any]]) -> None:
        default_cases["refusals"].result(timeout=180)
