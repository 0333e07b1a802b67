"""tasker on Celery's gevent workers: batches against single jobs, two processes against one.

Run: ``python bench/celery_scale.py`` (needs ``redis-server`` on PATH and
``tasker[celery]``). It starts a private redis-server and real ``celery worker -P
gevent`` processes of ``tests/celery_app`` and prints, best of ``--rounds``:

1. items/s of one process, one Celery message per item against batches of
   ``--batch`` items (each item: a 2 ms simulated fetch);
2. items/s of batches of ``--batch / 5`` items that also burn CPU (a client parsing
   what it fetched, ``--cpu-loops``), one worker process against two, and the ratio
   (the machine has 2 cores). Each process's ``-c`` is its share of the batches, so
   they split evenly and no consumer waits on a full prefetch.

Throughput is counted from the timestamps the jobs record, first to last, so worker
start-up is left out; items per CPU-second divide by the CPU time the worker
processes used meanwhile, which other load on the machine does not change. The
machine is shared: compare the ratios of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent / "tests" / "celery_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def cpu_seconds(workers: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU time the worker processes have used so far."""
    import psutil

    total = 0.0
    for worker in workers:
        times = psutil.Process(worker.pid).cpu_times()
        total += times.user + times.system
    return total


class Bench:
    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.redis = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port)
        wait_for(lambda: self._ping(client), 10, "redis-server")
        self.client = client
        self.round = 0

    @staticmethod
    def _ping(client: object) -> bool:
        try:
            return bool(client.ping())  # type: ignore[attr-defined]
        except Exception:
            return False

    def close(self) -> None:
        self.redis.terminate()
        self.redis.wait(10)

    def run(self, processes: int, items: int, batch: int, cpu_loops: int, concurrency: int) -> tuple[float, float]:
        """Items per second of ``processes`` workers running ``items`` items, ``batch`` per message
        (0: one message per item), and items per CPU-second the workers spent."""
        from celery import Celery  # type: ignore[import-untyped]

        self.round += 1
        records = self.workdir / f"round{self.round}"
        records.mkdir()
        self.client.flushdb()
        url = f"redis://127.0.0.1:{self.port}/0"
        path = os.pathsep.join([str(APP_DIR), os.environ.get("PYTHONPATH", "")])
        env = dict(
            os.environ, TASKER_TEST_BROKER=url, TASKER_TEST_RECORDS=str(records), C_FORCE_ROOT="1",
            TASKER_TEST_CPU_LOOPS=str(cpu_loops), PYTHONPATH=path,
        )  # fmt: skip
        workers = []
        for i in range(processes):
            log = (records / f"w{i}.log").open("w")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_testapp", "worker", "-P", "gevent",
                 "-c", str(concurrency), "-Q", "bench", "-n", f"w{i}@bench", "-l", "WARNING",
                 "--without-heartbeat", "--without-gossip", "--without-mingle"],
                cwd=APP_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        try:
            # A worker with the queue to itself is ready: BRPOP clients show one per worker.
            wait_for(lambda: sum(1 for c in self.client.client_list() if c.get("cmd") == "brpop") >= processes,
                     30, "the workers")  # fmt: skip
            cpu_before = cpu_seconds(workers)
            client = Celery("bench", broker=url)
            with client.producer_or_acquire() as producer:
                if batch:
                    for start in range(0, items, batch):
                        chunk = list(range(start, min(items, start + batch)))
                        client.send_task("celery_testapp.bench_items", (chunk,), queue="bench", producer=producer)
                else:
                    for n in range(items):
                        client.send_task("celery_testapp.bench_job", (n,), queue="bench", producer=producer)

            def stamps() -> list[float]:
                lines = [line for p in records.glob("*.bench") for line in p.read_text().splitlines()]
                return [float(line.split()[1]) for line in lines]

            wait_for(lambda: len(stamps()) >= items, 600, "every item")
            cpu = cpu_seconds(workers) - cpu_before
            times = stamps()
            return (len(times) - 1) / (max(times) - min(times)), len(times) / cpu
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--cpu-loops", type=int, default=20000, help="Python loop iterations per item, part 2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop the workers and Redis on the way out
    bench = Bench(Path(tempfile.mkdtemp(prefix="tasker-celery-bench-")))
    try:
        single, batched, one, two = [], [], [], []
        small = max(1, args.batch // 5)
        for _ in range(args.rounds):  # interleaved, so that a busy moment hits all alike
            single.append(bench.run(1, args.items, 0, 0, 100))
            batched.append(bench.run(1, args.items, args.batch, 0, 100))
            # Each process may hold exactly its share of the batches (-c = batches / processes):
            # the split is even, and no consumer waits on a full prefetch (see docs/recipes/celery.md).
            batches = -(-args.items // small)
            one.append(bench.run(1, args.items, small, args.cpu_loops, batches))
            two.append(bench.run(2, args.items, small, args.cpu_loops, -(-batches // 2)))
            print(f"round: single {single[-1][0]:.0f}/s, batch {batched[-1][0]:.0f}/s, "
                  f"cpu 1 proc {one[-1][0]:.0f}/s ({one[-1][1]:.0f}/CPU-s), "
                  f"cpu 2 procs {two[-1][0]:.0f}/s ({two[-1][1]:.0f}/CPU-s), load {os.getloadavg()[0]:.1f}",
                  flush=True)  # fmt: skip
        runs = {"single": single, "batched": batched, "one": one, "two": two}
        best = {name: max(rates) for name, rates in runs.items()}
        print(f"\n{args.items} items, best of {args.rounds} (items/s, items per worker CPU-second):")
        print(f"  one message per item              {best['single'][0]:8.0f} {best['single'][1]:8.0f}")
        gain = best["batched"][0] / best["single"][0]
        batched_best = f"{best['batched'][0]:8.0f} {best['batched'][1]:8.0f}"
        print(f"  batches of {args.batch:<4}                 {batched_best}  ({gain:.1f}x)")
        print(f"  CPU-bound batches, 1 process      {best['one'][0]:8.0f} {best['one'][1]:8.0f}")
        ratio = best["two"][0] / best["one"][0]
        print(f"  CPU-bound batches, 2 processes    {best['two'][0]:8.0f} {best['two'][1]:8.0f}  ({ratio:.2f}x)")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
