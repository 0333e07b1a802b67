"""``python -m tasker bench``: run the scenarios, print the table, check BENCH.md's targets.

B1-B4 run every implementation, interleaved, ``--repeat`` times for those a target
compares, and keep the best run of each; their rates are also given as a ratio to the
bare actor pool's in the same run. B5-B11 and the scale figures follow, then every
target with PASS or MISS (INFO: a figure BENCH.md asks to report, with no bound).
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

from ._cancel import BreakOutResult, CancelResult
from ._collector import CollectorResult
from ._drain import DrainResult
from ._idle import MemoryResult
from ._impls import BARE, POOL, SPAWN, TASKER, THREADS, ThreadPoolProcess, make_impl
from ._plot import Panel, Series, svg
from ._scale import LifecycleResult, TaskCost
from ._scaler import ScalerResult
from ._scrape import AIOHTTP, ScrapeRun
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
    "B4w": (TASKER, BARE, POOL),
}
# The implementations a target compares: only their runs are repeated (best kept).
REPEATED = {
    "B1": (TASKER, BARE, POOL),
    "B2": (TASKER, BARE),
    "B3": (TASKER, BARE),
    "B4": (),  # 10k workers: one run each is long enough to be stable; no target
    "B4w": (TASKER, BARE),
}
LABELS = {"B4": "B4 cold", "B4w": "B4 warm"}  # the scenario column of the table
TITLES = {
    "B1": "no-op tasks submitted in bulk, then wait all",
    "B2": "client greenlets, each a blocking submit-and-wait loop",
    "B3": "one client, blocking round trip of a no-op task",
    "B4": "gevent.sleep(0.01) tasks on many workers: cold (all parked first) and warm (all busy)",
    "B5": "scaler: idle -> saturation -> idle",
    "B6": "collector: record samples, read metrics()",
    "B7": "memory of idle workers",
    "B8": "loopback scraping: requests answered after 20 ms, C at once (client in its own process)",
    "B9": "cancel() of queued messages, against the depth of the queue",
    "B10": "leaving imap_unordered / map early, against the items in flight",
    "B11": "draining a deep queue of no-op tasks (8 workers), and memory per pending task",
    "scale": "per-task cost against workers; start-up, stop(), kill() and memory at many workers",
}
SCENARIOS = tuple(TITLES)


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
    """One BENCH.md target and whether this run met it (None: a figure to report, no bound)."""

    scenario: str
    text: str
    measured: str
    met: bool | None


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
    label = LABELS.get(scenario, scenario)
    return [Row(label, name, run.rate, run.rate / reference, run.latency, run.peak_rss) for name, run in best.items()]


@attrs.define
class Results:
    """What one run of the command measured, scenario by scenario (None: not run)."""

    best: dict[str, dict[str, Run]] = attrs.field(factory=dict)
    scaler: ScalerResult | None = None
    collector: CollectorResult | None = None
    memory: dict[str, MemoryResult] | None = None
    scrape: dict[int, dict[str, ScrapeRun]] | None = None  # C -> client -> best run
    scrape_skipped: tuple[str, ...] = ()
    cancels: list[CancelResult] | None = None
    break_outs: dict[str, list[BreakOutResult]] | None = None  # method -> [small, large]
    drain: dict[str, DrainResult] | None = None
    task_costs: list[TaskCost] | None = None
    lifecycles: list[LifecycleResult] | None = None


def _targets(results: Results) -> list[Target]:
    best = results.best
    targets = []

    def ratio(scenario: str, other: str, need: float, info: bool = False) -> None:
        if scenario in best:
            got = best[scenario][TASKER].rate / best[scenario][other].rate
            label = LABELS.get(scenario, scenario)
            text = f"tasker vs {other} (tasks/s)" if info else f"tasker >= {need:g} x {other} (tasks/s)"
            targets.append(Target(label, text, f"{got:.2f} x", None if info else got >= need))

    ratio("B1", BARE, 0.6)
    ratio("B1", POOL, 3.0)
    ratio("B2", BARE, 0.5)
    if "B3" in best:
        mine, floor = best["B3"][TASKER].latency, best["B3"][BARE].latency
        assert mine is not None and floor is not None
        got = mine[0] / floor[0]
        targets.append(Target("B3", f"tasker p50 latency <= 2 x {BARE}", f"{got:.2f} x", got <= 2.0))
    ratio("B4", BARE, 0.0, info=True)
    ratio("B4w", BARE, 0.9)
    scaler, collector, memory = results.scaler, results.collector, results.memory
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
    targets += _scrape_targets(results)
    if results.cancels:
        small, large = results.cancels[0], results.cancels[-1]
        got = large.per_cancel / small.per_cancel
        targets.append(
            Target(
                "B9",
                f"per-cancel cost at {large.depth:,} queued <= 2 x at {small.depth:,}",
                f"{got:.2f} x ({_us(large.per_cancel)} vs {_us(small.per_cancel)} us)",
                got <= 2.0,
            )
        )
    for method, (small_run, large_run) in (results.break_outs or {}).items():
        targets.append(
            Target(
                "B10",
                f"leave {method} with {large_run.in_flight:,} in flight <= 0.5 s",
                f"{large_run.seconds:.3f} s",
                large_run.seconds <= 0.5 and large_run.queued_left == 0,
            )
        )
        got = large_run.per_item / small_run.per_item
        targets.append(
            Target(
                "B10",
                f"{method}: linear (per item at {large_run.in_flight:,} <= 2 x at {small_run.in_flight:,})",
                f"{got:.2f} x",
                got <= 2.0,
            )
        )
    if results.drain is not None:
        drained, bare_drain = results.drain[TASKER], results.drain[BARE]
        got = drained.per_task / bare_drain.per_task
        targets.append(
            Target(
                "B11",
                f"drain {drained.tasks:,}: per-task cost <= 3 x {BARE}",
                f"{got:.2f} x ({_us(drained.per_task)} vs {_us(bare_drain.per_task)} us)",
                got <= 3.0,
            )
        )
        targets.append(
            Target(
                "B11",
                "memory per pending task (tasker / bare)",
                f"{drained.bytes_per_pending:,.0f} B / {bare_drain.bytes_per_pending:,.0f} B",
                None,
            )
        )
    targets += _scale_targets(results)
    return targets


def _scrape_c(results: Results) -> int | None:
    """The concurrency B8's targets are judged at: 1,000, else the nearest measured."""
    if not results.scrape:
        return None
    return min(results.scrape, key=lambda c: (abs(c - 1000), c))


def _scrape_targets(results: Results) -> list[Target]:
    c = _scrape_c(results)
    if c is None or results.scrape is None:
        return []
    runs = results.scrape[c]
    mine = runs[TASKER].rate
    targets = []
    for other, need in ((POOL, 1.1), (AIOHTTP, 1.2)):
        text = f"C = {c:,}: tasker >= {need:g} x {other} (req/s)"
        if other in runs:
            got = mine / runs[other].rate
            targets.append(Target("B8", text, f"{got:.2f} x", got >= need))
        else:
            targets.append(Target("B8", text, "skipped (pip install tasker[bench])", None))
    targets.append(
        Target(
            "B8",
            f"C = {c:,}: client CPU per request (tasker)",
            f"{_us(runs[TASKER].cpu_per_request)} us",
            None,
        )
    )
    return targets


def _scale_targets(results: Results) -> list[Target]:
    """Growth of every per-unit scale figure from the smallest count to the largest (INFO)."""
    targets = []
    costs = [c for c in results.task_costs or [] if c.impl == TASKER]
    if len(costs) >= 2:
        small, large = costs[0], costs[-1]
        targets.append(
            Target(
                "scale",
                f"per-task cost, {large.workers:,} workers / {small.workers:,}",
                f"{large.per_task / small.per_task:.2f} x",
                None,
            )
        )
    cycles = results.lifecycles or []
    if len(cycles) >= 2:
        small_c, large_c = cycles[0], cycles[-1]
        for name in ("start", "stop", "kill"):
            a = getattr(small_c, name) / small_c.workers
            b = getattr(large_c, name) / large_c.workers
            targets.append(
                Target(
                    "scale",
                    f"{name} per worker, {large_c.workers:,} workers / {small_c.workers:,}",
                    f"{b / a:.2f} x" if a > 0 else "-",
                    None,
                )
            )
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
        verdict = "INFO" if target.met is None else "PASS" if target.met else "MISS"
        lines.append(f"  {verdict}  {target.scenario}  {target.text}: {target.measured}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasker bench",
        description=(
            "Benchmarks B1-B11 of BENCH.md and the scale figures: tasker side by side with "
            "plain-gevent baselines (spawn-per-task, gevent Pool, a bare actor pool, ThreadPoolExecutor "
            "under monkey patching) and, for B8, gevent Pool, asyncio + aiohttp and threads fetching "
            "from a loopback server. Targets are ratios measured in the same run, so they hold on a "
            "noisy machine."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="BENCH.md sizes (200k tasks, 1M queued...; many minutes)")
    size.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument(
        "--repeat", type=int, help="runs of the implementations a target compares, best kept (default 3)"
    )
    parser.add_argument(
        "--only", metavar="B1,B9", help=f"comma-separated scenarios to run (default: all of {', '.join(SCENARIOS)})"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--plot",
        nargs="?",
        const="tasker-scale.svg",
        metavar="FILE.svg",
        help="write the scale figures as an SVG chart (default file: tasker-scale.svg)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="say what runs, on stderr")
    return parser


def _scrape_rows(scrape: dict[int, dict[str, ScrapeRun]]) -> list[Row]:
    rows = []
    for c, runs in scrape.items():
        pool = runs[POOL].rate if POOL in runs else None
        for name, run in runs.items():
            versus = f"{run.rate / pool:.2f} x {POOL}; " if pool else ""
            rows.append(
                Row(
                    "B8",
                    f"{name}, C = {c:,}",
                    run.rate,
                    latency=(run.p50, run.p95, run.p99),
                    peak_rss=run.peak_rss,
                    note=(
                        f"req/s; {versus}client CPU {_us(run.cpu_per_request)} us/req; "
                        f"server CPU {_us(run.server_per_request)} us/req ({run.server_load:.0%} of a core)"
                    ),
                )
            )
    return rows


def _plot(results: Results, path: str, drain: DrainResult | None) -> None:
    costs = results.task_costs or []
    panels = [
        Panel(
            "per-task cost (no-op tasks in bulk)",
            "workers",
            "us per task",
            tuple(
                Series(impl, tuple((c.workers, c.per_task * 1e6) for c in costs if c.impl == impl))
                for impl in (TASKER, BARE)
            ),
        )
    ]
    cycles = results.lifecycles or []
    if cycles:
        panels.append(
            Panel(
                "start-up, stop(), kill() of idle workers",
                "workers",
                "us per worker",
                tuple(
                    Series(name, tuple((c.workers, getattr(c, name) / c.workers * 1e6) for c in cycles))
                    for name in ("start", "stop", "kill")
                ),
            )
        )
        panels.append(
            Panel(
                "memory per idle worker",
                "workers",
                "KB per worker",
                (Series("RSS added", tuple((c.workers, c.bytes_per_worker / 1024) for c in cycles)),),
            )
        )
    caption = ""
    if drain is not None:
        caption = f"memory per pending task at {drain.tasks:,} queued: {drain.bytes_per_pending:,.0f} B (RSS)"
    with open(path, "w") as f:
        f.write(svg(panels, caption))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the table; the exit status of ``python -m tasker bench``."""
    # Looked up on the package when the command runs, so that a test can stub a scenario
    # with monkeypatch.setattr(tasker._bench, "collector_costs", ...).
    from . import (
        break_out_cost,
        cancel_cost,
        collector_costs,
        drain_queue,
        idle_memory,
        lifecycle,
        scaler_response,
        scrape_all,
        task_cost,
    )

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
    scenarios = list(SCENARIOS)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        names = {s.upper(): s for s in SCENARIOS}
        unknown = [s for s in wanted if s.upper() not in names]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = {names[s.upper()] for s in wanted}
        scenarios = [s for s in SCENARIOS if s in chosen]

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
    results = Results()
    throughput = [t for s in scenarios for t in ((s, "B4w") if s == "B4" else (s,)) if t in THROUGHPUT_IMPLS]
    if throughput:
        with ThreadPoolProcess() as child:
            for scenario in throughput:
                results.best[scenario] = _throughput(scenario, sizes, child, repeat, log)
                rows += _throughput_rows(scenario, results.best[scenario])
    if "B5" in scenarios:
        log("B5 scaler")
        scaler = results.scaler = scaler_response(steady_ticks=5 if sizes is QUICK else 15)
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
        collector = results.collector = collector_costs(sizes.records)
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
        memory = results.memory = {kind: idle_memory(kind, sizes.idle_workers) for kind in ("greenlet", "tasker")}
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
    if "B8" in scenarios:
        results.scrape, results.scrape_skipped = scrape_all(sizes, repeat, log)
        rows += _scrape_rows(results.scrape)
        for name in results.scrape_skipped:
            rows.append(Row("B8", name, note="skipped (pip install tasker[bench])"))
    if "B9" in scenarios:
        results.cancels = []
        for depth in sizes.cancel_depths:
            log(f"B9 cancel at {depth:,} queued")
            cancel = cancel_cost(depth, sizes.cancels)
            results.cancels.append(cancel)
            rows.append(
                Row(
                    "B9",
                    f"tasker, {depth:,} queued",
                    1 / cancel.per_cancel,
                    note=f"cancels/s; {_us(cancel.per_cancel)} us per cancel (best of 3 rounds of {cancel.cancels:,})",
                )
            )
    if "B10" in scenarios:
        results.break_outs = {}
        for method in ("imap_unordered", "map"):
            pair = []
            for n in (max(1, sizes.in_flight // 10), sizes.in_flight):
                log(f"B10 {method} with {n:,} in flight")
                left = break_out_cost(method, n, rounds=repeat)
                pair.append(left)
                rows.append(
                    Row(
                        "B10",
                        f"{method}, {n:,} in flight",
                        note=(
                            f"left in {left.seconds:.3f} s, {_us(left.per_item)} us per item, "
                            f"{left.queued_left} left queued"
                        ),
                    )
                )
            results.break_outs[method] = pair
    if "B11" in scenarios:
        results.drain = {}
        for _ in range(repeat):
            for impl in (TASKER, BARE):
                log(f"B11 {impl} drains {sizes.drain_tasks:,}")
                drain = drain_queue(impl, sizes.drain_tasks)
                if impl not in results.drain or drain.seconds < results.drain[impl].seconds:
                    results.drain[impl] = drain
        for impl in (TASKER, BARE):
            drain = results.drain[impl]
            rows.append(
                Row(
                    "B11",
                    impl,
                    drain.rate,
                    drain.rate / results.drain[BARE].rate,
                    peak_rss=drain.peak_rss,
                    note=f"{_us(drain.per_task)} us per task; {drain.bytes_per_pending:,.0f} B per pending task",
                )
            )
    if "scale" in scenarios:
        results.task_costs = []
        for workers in sizes.scale_workers:
            costs = {}
            for impl in (TASKER, BARE):
                log(f"scale: {impl}, {workers:,} workers")
                costs[impl] = task_cost(impl, workers, sizes.scale_tasks)
                results.task_costs.append(costs[impl])
            mine = costs[TASKER]
            rows.append(
                Row(
                    "scale",
                    f"tasker, {workers:,} workers",
                    1 / mine.per_task,
                    costs[BARE].per_task / mine.per_task,
                    note=f"{_us(mine.per_task)} us per task ({BARE}: {_us(costs[BARE].per_task)})",
                )
            )
        results.lifecycles = []
        for workers in sizes.scale_idle:
            log(f"scale: start/stop/kill at {workers:,} workers")
            cycle = lifecycle(workers)
            results.lifecycles.append(cycle)
            rows.append(
                Row(
                    "scale",
                    f"tasker, {workers:,} idle workers",
                    note=(
                        f"start {cycle.start:.3f} s, stop() {cycle.stop:.3f} s, kill() {cycle.kill:.3f} s; "
                        f"{cycle.bytes_per_worker / 1024:.1f} KB per idle worker"
                    ),
                )
            )
    print()
    for scenario in scenarios:
        print(f"  {scenario}: {TITLES[scenario]}")
    print()
    targets = _targets(results)
    print(format_table(rows, targets))
    print(f"\n({time.perf_counter() - started:.1f} s; ratios are tasks/s over the {REFERENCE}'s, in this run)")
    if args.plot:
        if results.task_costs is None:
            print("--plot: the scale figures did not run (add scale to --only)", file=sys.stderr)
        else:
            _plot(results, args.plot, results.drain[TASKER] if results.drain else None)
            print(f"scale chart written to {args.plot}")
    if args.check and any(t.met is False for t in targets):
        return 1
    return 0
