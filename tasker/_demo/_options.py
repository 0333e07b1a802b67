"""The demo's command line, parsed and checked into :class:`Options`."""

from __future__ import annotations

import argparse
import math

import attrs

__all__ = ["WAVE_SECONDS", "Options", "parse_args"]

WAVE_SECONDS = 0.5  # URLs arrive in a wave every half second (or one by one, if slower)


@attrs.frozen
class Options:
    """The command line, checked."""

    urls: int
    workers: int
    max_workers: int
    rate: float
    flaky_rate: float
    seed: int


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):  # nan or inf would crash the producer's pacing
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


def parse_args(argv: list[str]) -> Options:
    """Parse ``argv`` (without the ``demo`` word); exits on ``--help`` or an error."""
    parser = argparse.ArgumentParser(
        prog="python -m tasker demo",
        description="Fetch thousands of URLs from a flaky local HTTP server with a tasker "
        "TaskManager whose workers each own a keep-alive connection.",
        epilog="Ctrl-C once stops gracefully, twice kills. Exit status: 0 all replies received "
        "and every connection closed; 1 a reply missing or a connection leaked; 130 interrupted.",
    )
    parser.add_argument("--urls", type=_positive_int, default=3000, help="URLs to fetch (default: 3000)")
    parser.add_argument("--workers", type=_positive_int, default=8, help="base workers (default: 8)")
    parser.add_argument(
        "--max-workers", type=_positive_int, default=None, help="base + burst ceiling (default: 4 x --workers)"
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=1000.0,
        help=f"URLs submitted per second, in a wave every {WAVE_SECONDS:g} s; 0 submits all at once (default: 1000)",
    )
    parser.add_argument(
        "--flaky-rate", type=_share, default=0.04, help="share of requests that reset or answer 503 (default: 0.04)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the server's faults and delays (default: 1)")
    ns = parser.parse_args(argv)
    max_workers = 4 * ns.workers if ns.max_workers is None else ns.max_workers
    if max_workers < ns.workers:
        parser.error(f"--max-workers ({max_workers}) must be >= --workers ({ns.workers})")
    return Options(ns.urls, ns.workers, max_workers, ns.rate, ns.flaky_rate, ns.seed)
