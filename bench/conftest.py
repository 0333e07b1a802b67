"""Fixtures of the benchmarks: the sizes to run at, and the ThreadPoolExecutor child process.

``pytest bench/ --benchmark-only`` runs at ``tasker._bench.DEFAULT`` sizes (set
``TASKER_BENCH_SIZES=full`` for BENCH.md's, ``quick`` for tiny ones);
``pytest bench --benchmark-disable`` (CI smoke mode) runs every body once at
``QUICK`` sizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tasker._bench import DEFAULT, QUICK, SIZES, Sizes, ThreadPoolProcess


@pytest.fixture
def sizes(benchmark: Any) -> Sizes:
    """QUICK when benchmarks are disabled; else ``$TASKER_BENCH_SIZES`` (default: DEFAULT)."""
    if not benchmark.enabled:
        return QUICK
    name = os.environ.get("TASKER_BENCH_SIZES", DEFAULT.name)
    if name not in SIZES:
        raise pytest.UsageError(f"TASKER_BENCH_SIZES must be one of {sorted(SIZES)}, got {name!r}")
    return SIZES[name]


@pytest.fixture(scope="session")
def threads_child() -> Iterator[ThreadPoolProcess]:
    """One monkey-patched child process for every ThreadPoolExecutor benchmark."""
    with ThreadPoolProcess() as child:
        yield child
