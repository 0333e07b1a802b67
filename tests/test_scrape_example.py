"""examples/scrape.py runs as a script, small, and its summary matches what its server did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "scrape.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess: the script monkey-patches, the test process must not be.
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def summary(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9 -]+): (.+)$", stdout, re.MULTILINE))


class TestScrapeExample:
    """A 300-page scrape over 3 hosts: per-host limits hold, resets replace sessions, 503s are retried."""

    def test_small_scrape(self) -> None:
        pages, workers, max_workers, max_retries, per_host = 300, 4, 16, 2, 3
        done = run(
            f"--pages={pages}", f"--workers={workers}", f"--max-workers={max_workers}",
            f"--max-retries={max_retries}", "--slow-ms=20", "--hosts=3", f"--per-host={per_host}",
            "--retry-after=0",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr == ""
        result = summary(done.stdout)
        # The server's rules, from the script's docstring.
        broken = [p for p in range(pages) if p % 100 == 57]
        flaky = [p for p in range(pages) if p % 10 == 3]
        overloaded = [p for p in range(pages) if p % 20 == 11]
        failed = len(broken)
        assert int(result["pages"]) == pages
        assert int(result["ok"]) == pages - failed
        assert int(result["failed"]) == failed
        assert int(result["retries exhausted"]) == len(broken)
        assert int(result["http errors"]) == 0  # every 503 was retried after its Retry-After
        resets = len(flaky) + len(broken) * (max_retries + 1)
        assert int(result["connection resets"]) == int(result["unhealthy failures"]) == resets
        assert int(result["redeliveries"]) == len(flaky) + len(broken) * max_retries
        assert int(result["transient retries"]) == len(overloaded)
        # Measured by the servers: never over the limit (most pages take well under 1 ms,
        # so reaching it exactly depends on the schedule).
        assert 1 < int(result["peak in flight on one host"]) <= per_host
        created = int(result["sessions created"])
        assert created == int(result["sessions destroyed"])
        assert created > workers  # broken sessions were replaced
        assert 0 < int(result["peak burst workers"]) <= max_workers - workers
        assert int(result["peak workers"]) <= max_workers
        assert result["drained"] == "True"

    def test_rejects_zero_retries(self) -> None:
        done = run("--pages=10", "--max-retries=0")
        assert done.returncode == 2
        assert "--max-retries must be >= 1" in done.stderr
