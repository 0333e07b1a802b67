"""How big each benchmark scenario is: tasks, workers, records, repeats.

:data:`FULL` is BENCH.md, :data:`DEFAULT` fits in a minute and :data:`QUICK` is a smoke
test (``--quick``, and ``pytest bench --benchmark-disable``).
"""

from __future__ import annotations

import attrs

__all__ = ["DEFAULT", "FULL", "QUICK", "SIZES", "Sizes"]


@attrs.frozen
class Sizes:
    """How big each scenario is; :data:`FULL` is BENCH.md, :data:`DEFAULT` fits in a minute."""

    name: str
    bulk_tasks: int  # B1
    client_tasks: int  # B2, over all clients
    round_trips: int  # B3
    io_workers: int  # B4
    io_tasks: int  # B4
    records: int  # B6
    idle_workers: int  # B7
    repeat: int  # runs of B1-B3 of the implementations a target compares; the best is kept
    workers: int = 8  # B1-B3
    clients: int = 100  # B2


FULL = Sizes("full", 200_000, 200_000, 100_000, 10_000, 200_000, 1_000_000, 10_000, repeat=3)
DEFAULT = Sizes("default", 40_000, 30_000, 10_000, 10_000, 30_000, 1_000_000, 10_000, repeat=3)
QUICK = Sizes("quick", 2_000, 2_000, 500, 500, 1_000, 20_000, 500, repeat=1)
SIZES = {s.name: s for s in (QUICK, DEFAULT, FULL)}
