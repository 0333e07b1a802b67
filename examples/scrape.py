"""Scrape thousands of pages with tasker: a requests.Session per worker, retries, bursting.

Run it (it serves its own pages, on 127.0.0.1 only)::

    python examples/scrape.py                      # 5,000 pages
    python examples/scrape.py --pages 300 -v       # smaller, with tasker's INFO logs

It starts a local gevent HTTP server (``pywsgi``) whose pages behave like the web:

- every 8th page is **slow** (``--slow-ms`` to 3x that);
- every 10th page is **flaky**: the first request for it has its connection reset
  (TCP RST). ``requests`` raises ``ConnectionError``; ``check_health`` calls that
  unhealthy, so the supervisor closes that worker's session, opens a new one and
  redelivers the page, which then loads;
- every 100th page is **broken**: it resets every time, so after ``--max-retries``
  redeliveries its caller gets ``RetriesExhaustedError``;
- every 20th page is **overloaded**: the first request gets ``503``. That is a
  healthy failure (the session is fine, nothing is redelivered); the scraper itself
  resubmits the *important* ones (every 3rd page) on the **priority lane**, so they
  overtake the backlog of the main lane instead of waiting behind it.

All pages are queued at once, so the backlog makes the scaler start burst workers up
to ``--max-workers``; they retire once idle. At the end it prints a summary, checks
every page's outcome against what the server was told to do, and exits 1 on any
surprise.
"""

from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

import argparse  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from gevent import pywsgi  # noqa: E402
from gevent.queue import Queue  # noqa: E402

import tasker  # noqa: E402


def kind(page: int) -> str:
    """What the server does with ``page``."""
    if page % 100 == 57:
        return "broken"
    if page % 10 == 3:
        return "flaky"
    if page % 20 == 11:
        return "overloaded"
    return "ok"


FAILURES = (tasker.RetriesExhaustedError, requests.HTTPError)  # the failures a scrape expects


def important(page: int) -> bool:
    return page % 3 == 0


def content(page: int) -> str:
    return f"<html><title>page {page}</title><body>{'lorem ipsum ' * 20}</body></html>"


# -- the site ---------------------------------------------------------------------------


class Site:
    """The WSGI app of the local server; counts the requests for each page."""

    def __init__(self, slow_ms: float) -> None:
        self.slow = slow_ms / 1000
        self.hits: Counter[int] = Counter()
        self.resets = 0

    def hit(self, path: str) -> tuple[int, int] | None:
        """The page and how many times it was asked for, or None if not a page."""
        prefix, _, number = path.rpartition("/")
        if prefix != "/page" or not number.isdigit():
            return None
        page = int(number)
        self.hits[page] += 1
        return page, self.hits[page]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if "scrape.page" not in environ:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        page, attempt = environ["scrape.page"]
        if page % 8 == 5:
            gevent.sleep(self.slow * (1 + page % 3))
        if kind(page) == "overloaded" and attempt == 1:
            start_response("503 Service Unavailable", [("Content-Length", "0"), ("Retry-After", "0")])
            return [b""]
        body = content(page).encode()
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
        return [body]


class Handler(pywsgi.WSGIHandler):  # type: ignore[misc]  # gevent ships no stubs
    """Resets the connection (an RST, no answer) for flaky and broken pages."""

    def handle_one_response(self) -> None:
        site = self.application
        hit = site.hit(self.path.split("?", 1)[0])
        if hit is None:
            super().handle_one_response()
            return
        page, attempt = hit
        if kind(page) == "broken" or (kind(page) == "flaky" and attempt == 1):
            site.resets += 1
            # Linger 0: close() sends RST instead of FIN, as a crashed peer or proxy does.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.environ["scrape.page"] = hit
        super().handle_one_response()


# -- the scraper ------------------------------------------------------------------------


class Scraper:
    """Fetches pages through a TaskManager whose workers each own a requests.Session."""

    def __init__(self, base_url: str, args: argparse.Namespace) -> None:
        self.base_url = base_url
        self.sessions_created = 0
        self.sessions_destroyed = 0
        self.connection_errors = 0
        config = tasker.Config(
            on_create=self.new_session,
            on_destroy=self.close_session,
            check_health=self.check_health,
            worker_count=args.workers,
            max_worker_count=args.max_workers,
            max_retries=args.max_retries,
            resource_pool_size=0,  # no run_task here
            burst_interval=0.05,
        )
        self.manager: tasker.TaskManager[requests.Session, str] = tasker.TaskManager(config)

    def new_session(self) -> requests.Session:
        self.sessions_created += 1
        session = requests.Session()
        session.headers["User-Agent"] = "tasker-scrape-example"
        return session

    def close_session(self, session: requests.Session) -> None:
        self.sessions_destroyed += 1
        session.close()

    def check_health(self, exc: BaseException) -> bool:
        # A reset or refused connection says this session's pool is suspect: replace it.
        # HTTP errors (4xx/5xx) are answers: the session is fine.
        if isinstance(exc, requests.ConnectionError):
            self.connection_errors += 1
            return False
        return True

    def fetch(self, page: int) -> Any:
        url = f"{self.base_url}/page/{page}"

        def task(ctx: tasker.Context, session: requests.Session) -> str:
            response = session.get(url, timeout=10)
            response.raise_for_status()
            return response.text

        return task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=5000, help="pages to fetch (default 5000)")
    parser.add_argument("--workers", type=int, default=20, help="base workers, one session each (default 20)")
    parser.add_argument("--max-workers", type=int, default=100, help="base + burst workers (default 100)")
    parser.add_argument("--max-retries", type=int, default=2, help="redeliveries after a reset (default 2)")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="delay of slow pages, in ms (default 50)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tasker's INFO logs")
    args = parser.parse_args(argv)
    if args.max_retries < 1:
        parser.error("--max-retries must be >= 1: a flaky page needs one redelivery")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    site = Site(args.slow_ms)
    server = pywsgi.WSGIServer(("127.0.0.1", 0), site, handler_class=Handler, log=None)
    server.start()
    scraper = Scraper(f"http://127.0.0.1:{server.server_port}", args)
    manager = scraper.manager

    peak = {"workers": 0, "burst": 0}

    def sample() -> None:
        while True:
            stats = manager.stats()
            peak["workers"] = max(peak["workers"], stats.base_workers + stats.burst_workers)
            peak["burst"] = max(peak["burst"], stats.burst_workers)
            gevent.sleep(0.01)

    sampler = gevent.spawn(sample)
    started = time.monotonic()
    finished: Queue[tuple[int, bool, tasker.TaskResult]] = Queue()

    def submit(page: int, priority: bool) -> None:
        reply = manager.submit(scraper.fetch(page), priority=priority)
        reply.rawlink(lambda r: finished.put((page, priority, r)))

    for page in range(args.pages):
        submit(page, priority=False)
    results: dict[int, str | BaseException] = {}
    resubmitted = 0
    backlog_overtaken: list[int] = []  # main-lane pages still queued when a priority retry ended
    pending = args.pages
    while pending:
        page, was_priority, reply = finished.get()
        pending -= 1
        if was_priority:
            backlog_overtaken.append(manager.stats().queued_tasks)
        error = reply.exception
        if error is None:
            results[page] = reply.value
        elif (
            not was_priority
            and important(page)
            and isinstance(error, requests.HTTPError)
            and error.response is not None
            and error.response.status_code == 503
        ):
            resubmitted += 1
            pending += 1
            submit(page, priority=True)
        else:
            results[page] = error
    elapsed = time.monotonic() - started
    metrics = manager.metrics()
    drained = manager.stop(timeout=30)
    sampler.kill()
    server.stop()

    ok = [p for p, r in results.items() if isinstance(r, str)]
    exhausted = [p for p, r in results.items() if isinstance(r, tasker.RetriesExhaustedError)]
    http_errors = [p for p, r in results.items() if isinstance(r, requests.HTTPError)]
    surprises = [p for p, r in results.items() if isinstance(r, str) and r != content(p)]
    expected_failures = {p for p in range(args.pages) if kind(p) == "broken"}
    expected_failures |= {p for p in range(args.pages) if kind(p) == "overloaded" and not important(p)}
    surprises += sorted(set(exhausted + http_errors) ^ expected_failures)
    surprises += [p for p, r in results.items() if not isinstance(r, (str, *FAILURES))]

    print(f"pages: {args.pages}")
    print(f"ok: {len(ok)}")
    print(f"failed: {args.pages - len(ok)}")
    print(f"retries exhausted: {len(exhausted)}")
    print(f"http errors: {len(http_errors)}")
    print(f"connection resets: {site.resets}")
    print(f"unhealthy failures: {scraper.connection_errors}")
    print(f"redeliveries: {metrics.total_tasks_retried}")
    print(f"priority resubmissions: {resubmitted}")
    print(f"most main-lane pages overtaken by a priority retry: {max(backlog_overtaken, default=0)}")
    print(f"sessions created: {scraper.sessions_created}")
    print(f"sessions destroyed: {scraper.sessions_destroyed}")
    print(f"peak workers: {peak['workers']}")
    print(f"peak burst workers: {peak['burst']}")
    print(f"drained: {drained}")
    print(f"elapsed: {elapsed:.2f} s ({args.pages / elapsed:.0f} pages/s)")
    print(f"p95 task time: {metrics.p95_execution_time * 1000:.1f} ms; mean wait: {metrics.average_wait_time:.3f} s")
    if surprises or not drained or scraper.sessions_created != scraper.sessions_destroyed:
        print(f"UNEXPECTED outcomes for pages {sorted(set(surprises))[:20]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
