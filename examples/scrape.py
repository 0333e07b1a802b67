"""Scrape thousands of pages from several hosts with tasker: per-host limits, a global rate,
transient retries with Retry-After, a requests.Session per worker, redeliveries, bursting.

Run it (it serves its own pages, on 127.0.0.1 only, one port per "host")::

    python examples/scrape.py                      # 5,000 pages over 4 hosts
    python examples/scrape.py --pages 300 -v       # smaller, with tasker's INFO logs

Page ``p`` lives on host ``p % --hosts``. The scraper writes no semaphore, no sleep and
no retry loop: politeness and retries are tasker's.

- **per-host limit**: each page is submitted with ``key=`` its host, and
  ``Config(key_concurrency=--per-host)`` keeps at most that many requests in flight per
  host; the servers measure it and the summary prints the peak they saw. A host at its
  limit holds back none of the others;
- **global rate**: ``Config(rate_limit=RateLimit(--rate))`` caps all requests together;
- every 8th page is **slow** (``--slow-ms`` to 3x that);
- every 10th page is **flaky**: the first request for it has its connection reset
  (TCP RST). ``requests`` raises ``ConnectionError``; ``check_health`` calls that
  unhealthy, so the supervisor closes that worker's session, opens a new one and
  redelivers the page, which then loads;
- every 100th page is **broken**: it resets every time, so after ``--max-retries``
  redeliveries its caller gets ``RetriesExhaustedError``;
- every 20th page is **overloaded**: the first request gets ``503`` with
  ``Retry-After: --retry-after``. That is a healthy failure (the session is fine): the
  ``RetryPolicy`` retries it once the server's delay has passed, on any worker, and
  the page loads. No worker waits meanwhile.

All pages are queued at once, so the backlog makes the scaler start burst workers up
to ``--max-workers``; they retire once idle. At the end it prints a summary, checks
every page's outcome against what the servers were told to do, and exits 1 on any
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


def content(page: int) -> str:
    return f"<html><title>page {page}</title><body>{'lorem ipsum ' * 20}</body></html>"


# -- the sites -------------------------------------------------------------------------


class Site:
    """The WSGI app of the local servers; counts requests per page and in flight per host."""

    def __init__(self, slow_ms: float, retry_after: int) -> None:
        self.slow = slow_ms / 1000
        self.retry_after = retry_after
        self.hits: Counter[int] = Counter()
        self.resets = 0
        self.in_flight: Counter[int] = Counter()  # per port
        self.peak: Counter[int] = Counter()

    def hit(self, path: str) -> tuple[int, int] | None:
        """The page and how many times it was asked for, or None if not a page."""
        prefix, _, number = path.rpartition("/")
        if prefix != "/page" or not number.isdigit():
            return None
        page = int(number)
        self.hits[page] += 1
        return page, self.hits[page]

    def enter(self, port: int) -> None:
        self.in_flight[port] += 1
        self.peak[port] = max(self.peak[port], self.in_flight[port])

    def leave(self, port: int) -> None:
        # Before the answer is written: the client cannot start its next request earlier.
        self.in_flight[port] -= 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if "scrape.page" not in environ:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        page, attempt = environ["scrape.page"]
        port = int(environ["SERVER_PORT"])
        try:
            if page % 8 == 5:
                gevent.sleep(self.slow * (1 + page % 3))
            if kind(page) == "overloaded" and attempt == 1:
                headers = [("Content-Length", "0"), ("Retry-After", str(self.retry_after))]
                start_response("503 Service Unavailable", headers)
                return [b""]
            body = content(page).encode()
            start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
            return [body]
        finally:
            self.leave(port)


class Handler(pywsgi.WSGIHandler):  # type: ignore[misc]  # gevent ships no stubs
    """Counts the request in flight; resets the connection (an RST) for flaky and broken pages."""

    def handle_one_response(self) -> None:
        site = self.application
        hit = site.hit(self.path.split("?", 1)[0])
        if hit is None:
            super().handle_one_response()
            return
        site.enter(self.server.server_port)
        page, attempt = hit
        if kind(page) == "broken" or (kind(page) == "flaky" and attempt == 1):
            site.resets += 1
            site.leave(self.server.server_port)
            # Linger 0: close() sends RST instead of FIN, as a crashed peer or proxy does.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.environ["scrape.page"] = hit
        super().handle_one_response()


# -- the scraper ------------------------------------------------------------------------


class Busy(requests.HTTPError):
    """A 429 or 503: try again later. ``retry_after`` (seconds) is what tasker's RetryPolicy reads."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"{response.status_code} for {response.url}", response=response)
        header = response.headers.get("Retry-After", "")
        self.retry_after = float(header) if header.isdigit() else None


class Scraper:
    """Fetches pages through a TaskManager whose workers each own a requests.Session."""

    def __init__(self, hosts: list[str], args: argparse.Namespace) -> None:
        self.hosts = hosts
        self.sessions_created = 0
        self.sessions_destroyed = 0
        self.connection_errors = 0
        config = tasker.Config(
            on_create=self.new_session,
            on_destroy=self.close_session,
            check_health=self.check_health,
            worker_count=args.workers,
            max_worker_count=args.max_workers,
            max_retries=args.max_retries,  # redeliveries after a reset (unhealthy)
            resource_pool_size=0,  # no run_task here
            burst_interval=0.05,
            key_concurrency=args.per_host,  # politeness: requests in flight per host
            rate_limit=tasker.RateLimit(args.rate, burst=args.workers) if args.rate else None,
            retry=tasker.RetryPolicy(retry_on=(Busy,), attempts=3, base_delay=0.5, max_delay=10.0),
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

    def host(self, page: int) -> str:
        return self.hosts[page % len(self.hosts)]

    def fetch(self, page: int) -> Any:
        url = f"{self.host(page)}/page/{page}"

        def task(ctx: tasker.Context, session: requests.Session) -> str:
            response = session.get(url, timeout=10)
            if response.status_code in (429, 503):
                raise Busy(response)  # retried by the policy after Retry-After
            response.raise_for_status()
            return response.text

        return task

    def submit(self, page: int) -> tasker.TaskResult:
        return self.manager.submit(self.fetch(page), key=self.host(page))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=5000, help="pages to fetch (default 5000)")
    parser.add_argument("--hosts", type=int, default=4, help="local servers, one port each (default 4)")
    parser.add_argument("--per-host", type=int, default=8, help="requests in flight per host (default 8)")
    parser.add_argument("--rate", type=float, default=5000.0, help="requests/s for all hosts, 0: none (default 5000)")
    parser.add_argument("--workers", type=int, default=20, help="base workers, one session each (default 20)")
    parser.add_argument("--max-workers", type=int, default=100, help="base + burst workers (default 100)")
    parser.add_argument("--max-retries", type=int, default=2, help="redeliveries after a reset (default 2)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 503, in s (default 1)")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="delay of slow pages, in ms (default 50)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tasker's INFO logs")
    args = parser.parse_args(argv)
    if args.max_retries < 1:
        parser.error("--max-retries must be >= 1: a flaky page needs one redelivery")
    if args.hosts < 1 or args.per_host < 1:
        parser.error("--hosts and --per-host must be >= 1")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    site = Site(args.slow_ms, args.retry_after)
    servers = [pywsgi.WSGIServer(("127.0.0.1", 0), site, handler_class=Handler, log=None) for _ in range(args.hosts)]
    for server in servers:
        server.start()
    scraper = Scraper([f"http://127.0.0.1:{server.server_port}" for server in servers], args)
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
    replies = {page: scraper.submit(page) for page in range(args.pages)}  # all queued at once
    gevent.wait(list(replies.values()))
    elapsed = time.monotonic() - started
    results: dict[int, str | BaseException] = {
        page: reply.value if reply.successful() else reply.exception for page, reply in replies.items()
    }
    metrics = manager.metrics()
    drained = manager.stop(timeout=30)
    sampler.kill()
    for server in servers:
        server.stop()

    ok = [p for p, r in results.items() if isinstance(r, str)]
    exhausted = [p for p, r in results.items() if isinstance(r, tasker.RetriesExhaustedError)]
    http_errors = [p for p, r in results.items() if isinstance(r, requests.HTTPError)]
    surprises = [p for p, r in results.items() if isinstance(r, str) and r != content(p)]
    expected_failures = {p for p in range(args.pages) if kind(p) == "broken"}
    surprises += sorted(set(exhausted + http_errors) ^ expected_failures)
    surprises += [p for p, r in results.items() if not isinstance(r, (str, tasker.RetriesExhaustedError))]
    host_peak = max(site.peak.values(), default=0)

    print(f"pages: {args.pages}")
    print(f"ok: {len(ok)}")
    print(f"failed: {args.pages - len(ok)}")
    print(f"retries exhausted: {len(exhausted)}")
    print(f"http errors: {len(http_errors)}")
    print(f"connection resets: {site.resets}")
    print(f"unhealthy failures: {scraper.connection_errors}")
    print(f"redeliveries: {metrics.total_tasks_retried}")
    print(f"transient retries: {metrics.total_transient_retries}")
    print(f"hosts: {args.hosts}")
    print(f"per-host limit: {args.per_host}")
    print(f"peak in flight on one host: {host_peak}")
    print(f"global rate limit: {args.rate:g}/s" if args.rate else "global rate limit: none")
    print(f"sessions created: {scraper.sessions_created}")
    print(f"sessions destroyed: {scraper.sessions_destroyed}")
    print(f"peak workers: {peak['workers']}")
    print(f"peak burst workers: {peak['burst']}")
    print(f"drained: {drained}")
    print(f"elapsed: {elapsed:.2f} s ({args.pages / elapsed:.0f} pages/s)")
    print(f"p95 task time: {metrics.p95_execution_time * 1000:.1f} ms; mean wait: {metrics.average_wait_time:.3f} s")
    if host_peak > args.per_host:
        surprises.append(-1)
        print(f"a host saw {host_peak} requests at once, over the limit of {args.per_host}", file=sys.stderr)
    if surprises or not drained or scraper.sessions_created != scraper.sessions_destroyed:
        print(f"UNEXPECTED outcomes for pages {sorted(set(surprises))[:20]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
