"""``python -m tasker bench``: run the scenarios, print the table, check BENCH.md's targets.

B1-B4 run every implementation, interleaved, ``--repeat`` times for those a target
compares, and keep the best run of each; their rates are also given as a ratio to the
bare actor pool's in the same run. B5-B7 follow, then every target with PASS or MISS.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import attrs
import gevent

from ._collector import CollectorResult
from ._idle import MemoryResult
from ._impls import BARE, POOL, SPAWN, TASKER, THREADS, ThreadPoolProcess, make_impl
from ._scaler import ScalerResult
from ._sizes import DEFAULT, FULL, QUICK, Sizes
from ._throughput import Run, measure

__all__ = ["Row", "Target", "format_table", "main"]

REFERENCE = BARE  # the baseline B1-B4 ratios are taken against
THROUGHPUT_IMPLS = {
    "B1": (TASKER, BARE, POOL, SPAWN, THREADS),
    "B2": (TASKER, BARE, POOL, SPAWN, THREADS),
    "B3": (TASKER, BARE, POOL, SPAWN, THREADS),
    # spawn-per-task has no concurrency bound: 200k tasks would sleep at once.
    "B4": (TASKER, BARE, POOL, THREADS),
}
# The implementations a target compares: only their runs are repeated (best kept).
REPEATED = {
    "B1": (TASKER, BARE, POOL),
    "B2": (TASKER, BARE),
    "B3": (TASKER, BARE),
    "B4": (),  # 10k workers: one run each is long enough to be stable
}
TITLES = {
    "B1": "no-op tasks submitted in bulk, then wait all",
    "B2": "client greenlets, each a blocking submit-and-wait loop",
    "B3": "one client, blocking round trip of a no-op task",
    "B4": "gevent.sleep(0.01) tasks on many workers",
    "B5": "scaler: idle -> saturation -> idle",
    "B6": "collector: record samples, read metrics()",
    "B7": "memory of idle workers",
}


@attrs.frozen
class Row:
    """One line of the table."""

    scenario: str
    impl: str
    rate: float | None = None  # tasks/s
    ratio: float | None = None  # rate / the reference's rate
    latency: tuple[float, float, float] | None = None  # seconds
    peak_rss: int | None = None  # bytes
    note: str = ""


@attrs.frozen
class Target:
    """One BENCH.md target and whether this run met it."""

    scenario: str
    text: str
    measured: str
    met: bool


def _best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.rate)


def _throughput(
    scenario: str, sizes: Sizes, child: ThreadPoolProcess, repeat: int, log: Callable[[str], None]
) -> dict[str, Run]:
    """Every implementation of ``scenario``, interleaved ``repeat`` times; the best run of each."""
    names = THROUGHPUT_IMPLS[scenario]
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in names:
            if round_ == 0 or name in REPEATED[scenario]:
                log(f"{scenario} {name}")
                run = measure(scenario, make_impl(name, child), sizes)
                log(f"  {run.rate:,.0f} tasks/s")
                runs[name].append(run)
    return {name: _best(r) for name, r in runs.items()}


def _throughput_rows(scenario: str, best: dict[str, Run]) -> list[Row]:
    reference = best[REFERENCE].rate
    return [
        Row(scenario, name, run.rate, run.rate / reference, run.latency, run.peak_rss) for name, run in best.items()
    ]


def _targets(
    best: dict[str, dict[str, Run]],
    scaler: ScalerResult | None,
    collector: CollectorResult | None,
    memory: dict[str, MemoryResult] | None,
) -> list[Target]:
    targets = []

    def ratio(scenario: str, other: str, need: float) -> None:
        if scenario in best:
            got = best[scenario][TASKER].rate / best[scenario][other].rate
            text = f"tasker >= {need:g} x {other} (tasks/s)"
            targets.append(Target(scenario, text, f"{got:.2f} x", got >= need))

    ratio("B1", BARE, 0.5)
    ratio("B1", POOL, 3.0)
    ratio("B2", BARE, 0.5)
    if "B3" in best:
        mine, floor = best["B3"][TASKER].latency, best["B3"][BARE].latency
        assert mine is not None and floor is not None
        got = mine[0] / floor[0]
        targets.append(Target("B3", f"tasker p50 latency <= 2 x {BARE}", f"{got:.2f} x", got <= 2.0))
    ratio("B4", BARE, 0.8)
    if scaler is not None:
        up, down = scaler.ticks_to_max, scaler.ticks_to_base
        limit = scaler.linger_ticks + 3
        targets.append(
            Target("B5", "max_worker_count within 3 intervals of the step", _ticks(up), up is not None and up <= 3)
        )
        targets.append(
            Target(
                "B5",
                f"back to base within linger + 3 = {limit:g} intervals",
                _ticks(down),
                down is not None and down <= limit,
            )
        )
        changes = scaler.changes_at_saturation + scaler.changes_at_partial
        targets.append(
            Target(
                "B5",
                "no oscillation at steady load (worker-count changes)",
                f"{scaler.changes_at_saturation} + {scaler.changes_at_partial}",
                scaler.changes_at_saturation >= 0 and changes == 0,
            )
        )
    if collector is not None:
        targets.append(
            Target(
                "B6",
                f"memory flat over {collector.records:,} records",
                f"{collector.growth:+,d} B",
                collector.growth <= 1024,
            )
        )
        targets.append(Target("B6", "record <= 2 us", f"{collector.record_us:.2f} us", collector.record_us <= 2.0))
        targets.append(Target("B6", "metrics() <= 1 ms", f"{collector.metrics_ms:.3f} ms", collector.metrics_ms <= 1.0))
    if memory is not None:
        extra = (memory["tasker"].per_item - memory["greenlet"].per_item) / 1024
        targets.append(Target("B7", "idle worker <= 12 KB above a parked greenlet", f"{extra:+.1f} KB", extra <= 12.0))
    return targets


def _ticks(ticks: float | None) -> str:
    return "never" if ticks is None else f"{ticks:.1f} ticks"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:,.1f}"


def format_table(rows: Sequence[Row], targets: Sequence[Target]) -> str:
    """The table of rows, then the targets with PASS/MISS."""
    header = ("scenario", "implementation", "tasks/s", f"vs {REFERENCE}", "p50 us", "p95 us", "p99 us", "peak RSS MB")
    cells = [header]
    for row in rows:
        lat = row.latency
        cells.append(
            (
                row.scenario,
                row.impl,
                _rate(row.rate),
                "-" if row.ratio is None else f"{row.ratio:.2f}",
                "-" if lat is None else _us(lat[0]),
                "-" if lat is None else _us(lat[1]),
                "-" if lat is None else _us(lat[2]),
                _mb(row.peak_rss),
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    notes = ["", *(row.note for row in rows)]
    lines = []
    for n, (line, note) in enumerate(zip(cells, notes, strict=True)):
        text = "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        lines.append(f"{text}  {note}".rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("targets (BENCH.md):")
    for target in targets:
        verdict = "PASS" if target.met else "MISS"
        lines.append(f"  {verdict}  {target.scenario}  {target.text}: {target.measured}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasker bench",
        description=(
            "Benchmarks B1-B7 of BENCH.md: tasker side by side with plain-gevent baselines "
            "(spawn-per-task, gevent Pool, a bare actor pool, ThreadPoolExecutor under monkey "
            "patching). Targets are ratios measured in the same run, so they hold on a noisy machine."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="BENCH.md sizes (200k tasks...; several minutes)")
    size.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument(
        "--repeat", type=int, help="runs of B1-B3 for the implementations a target compares, best kept (default 3)"
    )
    parser.add_argument("--only", metavar="B1,B3", help="comma-separated scenarios to run (default: all of B1-B7)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what runs, on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the table; the exit status of ``python -m tasker bench``."""
    # Looked up on the package when the command runs, so that a test can stub a scenario
    # with monkeypatch.setattr(tasker._bench, "collector_costs", ...).
    from . import collector_costs, idle_memory, scaler_response

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    sizes = FULL if args.full else QUICK if args.quick else DEFAULT
    repeat = args.repeat if args.repeat is not None else sizes.repeat
    if repeat < 1:
        parser.print_usage(sys.stderr)
        print("--repeat must be >= 1", file=sys.stderr)
        return 2
    scenarios = [f"B{i}" for i in range(1, 8)]
    if args.only:
        wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in scenarios]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        scenarios = [s for s in scenarios if s in wanted]

    def log(msg: str) -> None:
        if args.verbose:
            print(f"  running {msg}", file=sys.stderr, flush=True)

    print(
        f"tasker bench, {sizes.name} sizes, best of {repeat} runs: Python {platform.python_version()}, "
        f"gevent {gevent.__version__}, {os.cpu_count()} CPUs, {platform.machine()}",
        flush=True,
    )
    started = time.perf_counter()
    rows: list[Row] = []
    best: dict[str, dict[str, Run]] = {}
    scaler = collector = None
    memory: dict[str, MemoryResult] | None = None
    throughput = [s for s in scenarios if s in THROUGHPUT_IMPLS]
    if throughput:
        with ThreadPoolProcess() as child:
            for scenario in throughput:
                best[scenario] = _throughput(scenario, sizes, child, repeat, log)
                rows += _throughput_rows(scenario, best[scenario])
    if "B5" in scenarios:
        log("B5 scaler")
        scaler = scaler_response(steady_ticks=5 if sizes is QUICK else 15)
        rows.append(
            Row(
                "B5",
                "tasker scaler",
                note=(
                    f"interval {scaler.interval * 1e3:g} ms: max in {_ticks(scaler.ticks_to_max)}, "
                    f"base in {_ticks(scaler.ticks_to_base)} after the load, "
                    f"{scaler.changes_at_saturation}/{scaler.changes_at_partial} changes at steady full/partial load"
                ),
            )
        )
    if "B6" in scenarios:
        log("B6 collector")
        collector = collector_costs(sizes.records)
        rows.append(
            Row(
                "B6",
                "tasker Collector",
                peak_rss=collector.peak_rss,
                note=(
                    f"record {collector.record_us:.2f} us, metrics() {collector.metrics_ms:.3f} ms, "
                    f"{collector.growth:+,d} B over {collector.records:,} records"
                ),
            )
        )
    if "B7" in scenarios:
        log("B7 memory")
        memory = {kind: idle_memory(kind, sizes.idle_workers) for kind in ("greenlet", "tasker")}
        for kind, label in (("tasker", "tasker workers"), ("greenlet", "parked greenlets")):
            result = memory[kind]
            rows.append(
                Row(
                    "B7",
                    label,
                    peak_rss=result.peak_rss,
                    note=f"{result.per_item / 1024:.1f} KB each over {result.count:,}",
                )
            )
    print()
    for scenario in scenarios:
        print(f"  {scenario}: {TITLES[scenario]}")
    print()
    targets = _targets(best, scaler, collector, memory)
    print(format_table(rows, targets))
    print(f"\n({time.perf_counter() - started:.1f} s; ratios are tasks/s over the {REFERENCE}'s, in this run)")
    if args.check and not all(t.met for t in targets):
        return 1
    return 0
