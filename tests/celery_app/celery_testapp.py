"""A Celery app for tests/test_celery*.py, run by real ``celery worker`` processes.

Each job sleeps a little (the "fetch": the window a shutdown can hit), then records its
number with one unbuffered ``os.write`` that no greenlet switch can split, so a job is
done exactly when its line exists. Resources record their creation and destruction.
Everything is configured by environment variables, set by the test.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

import gevent
from celery import Celery  # type: ignore[import-untyped]

import tasker
from tasker.contrib.celery import Integration

BROKER = os.environ.get("TASKER_TEST_BROKER", "memory://")
RECORDS = Path(os.environ.get("TASKER_TEST_RECORDS", "."))
JOB_SECONDS = float(os.environ.get("TASKER_TEST_JOB_SECONDS", "0.002"))

app = Celery("celery_testapp", broker=BROKER)
app.conf.update(
    broker_transport_options={"visibility_timeout": float(os.environ.get("TASKER_TEST_VISIBILITY", "3600"))},
    broker_connection_retry_on_startup=False,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    worker_enable_remote_control=False,  # no pidbox: a worker stops a second sooner
)

_ids = itertools.count(1)
_files: dict[str, int] = {}


def record(kind: str, line: str) -> None:
    """Append ``line`` to this process's ``<pid>.<kind>`` file, in one write."""
    fd = _files.get(kind)
    if fd is None:
        fd = _files[kind] = os.open(RECORDS / f"{os.getpid()}.{kind}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{line}\n".encode())


def make_resource() -> str:
    if os.environ.get("TASKER_TEST_FAIL_CREATE"):
        raise ConnectionRefusedError("the test's on_create always fails")
    resource = f"{os.getpid()}-{next(_ids)}"
    record("res", f"c {resource}")
    return resource


def destroy_resource(resource: str) -> None:
    record("res", f"d {resource}")


def make_config() -> tasker.Config[str]:
    return tasker.Config(on_create=make_resource, on_destroy=destroy_resource, worker_count=8, max_worker_count=16)


tasks = Integration(app, make_config, stop_timeout=10, restore_interval=0.25)


def work(n: int, kind: str) -> int:
    gevent.sleep(JOB_SECONDS)
    record(kind, str(n))
    return n


@app.task(bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def job(self: Any, n: int) -> int:
    return tasks.call(self, lambda ctx, resource: work(n, "done"), timeout=30)


@tasks.batch_task(name="celery_testapp.items", acks_late=True, max_retries=3)
def items(ctx: tasker.Context, resource: str, n: int) -> int:
    return work(n, "items")


# For bench/celery_scale.py: the same job, timestamped, plus an optional CPU-bound part
# (a client parsing what it fetched).
CPU_LOOPS = int(os.environ.get("TASKER_TEST_CPU_LOOPS", "0"))


def bench_work(n: int) -> int:
    gevent.sleep(JOB_SECONDS)
    x = 0
    for i in range(CPU_LOOPS):
        x += i * i
    record("bench", f"{n} {time.time()}")
    return n


@app.task(bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def bench_job(self: Any, n: int) -> int:
    return tasks.call(self, lambda ctx, resource: bench_work(n))


@tasks.batch_task(name="celery_testapp.bench_items", acks_late=True)
def bench_items(ctx: tasker.Context, resource: str, n: int) -> int:
    return bench_work(n)
