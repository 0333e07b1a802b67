"""``python -m tasker bench``: the command runs every scenario and reports each target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasker import _bench
from tasker._bench import BareActorPool, Row, Target, format_table, main, percentiles

ROOT = Path(__file__).resolve().parent.parent
ROWS = {
    "B1": ("tasker", "bare actor pool", "gevent Pool", "spawn-per-task", "ThreadPoolExecutor"),
    "B2": ("tasker", "bare actor pool", "gevent Pool", "spawn-per-task", "ThreadPoolExecutor"),
    "B3": ("tasker", "bare actor pool", "gevent Pool", "spawn-per-task", "ThreadPoolExecutor"),
    "B4 cold": ("tasker", "bare actor pool", "gevent Pool", "ThreadPoolExecutor"),
    "B4 warm": ("tasker", "bare actor pool", "gevent Pool"),
    "B5": ("tasker scaler",),
    "B6": ("tasker Collector",),
    "B7": ("tasker workers", "parked greenlets"),
    # QUICK sizes: C = 20 (the threads too), 100 / 1,000 / 10,000 queued, 50 and 500 in flight.
    "B8": ("tasker, C = 20", "gevent Pool, C = 20", "asyncio + aiohttp, C = 20", "ThreadPoolExecutor, C = 20"),
    "B9": ("tasker, 100 queued", "tasker, 1,000 queued", "tasker, 10,000 queued"),
    "B10": (
        "imap_unordered, 50 in flight",
        "imap_unordered, 500 in flight",
        "map, 50 in flight",
        "map, 500 in flight",
    ),
    "B11": ("tasker", "bare actor pool"),
    "scale": ("tasker, 8 workers", "tasker, 100 workers", "tasker, 200 idle workers", "tasker, 500 idle workers"),
}
TARGETS = {  # scenario -> (PASS/MISS verdicts, INFO lines)
    "B1": (2, 0),
    "B2": (1, 0),
    "B3": (1, 0),
    "B4 cold": (0, 1),
    "B4 warm": (1, 0),
    "B5": (3, 0),
    "B6": (3, 0),
    "B7": (1, 0),
    "B8": (1, 2),  # without aiohttp; with it, its ratio is judged: (2, 1)
    "B9": (1, 0),
    "B10": (4, 0),
    "B11": (1, 1),
    "scale": (0, 4),
}


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench") / "scale.svg"


@pytest.fixture(scope="module")
def quick_run(chart: Path) -> subprocess.CompletedProcess[str]:
    """One ``python -m tasker bench --quick --plot`` in a subprocess, shared by the tests that read it."""
    return subprocess.run(
        [sys.executable, "-m", "tasker", "bench", "--quick", "--plot", str(chart)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _row_scenario(line: str) -> str | None:
    """The scenario of a table row (the longest label it starts with), or None."""
    labels = sorted(ROWS, key=len, reverse=True)
    return next((label for label in labels if line.startswith(f"{label}  ")), None)


class TestQuickRun:
    """``--quick`` runs every scenario in seconds, exits 0 and prints a row for every implementation."""

    def test_exits_zero(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        assert quick_run.returncode == 0, quick_run.stderr

    def test_writes_the_scale_chart(self, quick_run: subprocess.CompletedProcess[str], chart: Path) -> None:
        from xml.dom import minidom

        assert f"scale chart written to {chart}" in quick_run.stdout
        document = minidom.parse(str(chart))
        assert document.documentElement is not None and document.documentElement.tagName == "svg"
        assert len(document.getElementsByTagName("polyline")) == 2 + 3 + 1  # the series of the three panels

    @pytest.mark.parametrize("scenario", sorted(ROWS))
    def test_prints_every_row_of_the_scenario(self, quick_run: subprocess.CompletedProcess[str], scenario: str) -> None:
        table = [line for line in quick_run.stdout.splitlines() if _row_scenario(line) == scenario]
        impls = [line[len(scenario) :].strip() for line in table]
        for impl in ROWS[scenario]:
            if impl.startswith("asyncio") and not _bench.aiohttp_available():
                impl = "asyncio + aiohttp"  # one row, "skipped (pip install tasker[bench])"
            assert any(i.startswith(impl + "  ") for i in impls), (impl, table)
        assert len(table) == len(ROWS[scenario]), table

    def test_throughput_rows_have_a_rate_and_a_ratio(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        for line in quick_run.stdout.splitlines():
            if _row_scenario(line) in ("B1", "B2", "B3", "B4 cold", "B4 warm", "B11"):
                cells = line.split("  ")
                numbers = [c.strip() for c in cells if c.strip()][2:4]
                assert float(numbers[0].replace(",", "")) > 0, line
                assert float(numbers[1]) > 0, line
            if line.startswith("B1  ") and "bare actor pool" in line:
                assert " 1.00 " in line  # the reference of B1-B4 is itself

    def test_reports_every_target(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        out = quick_run.stdout
        lines = [line.strip() for line in out[out.index("targets (BENCH.md):") :].splitlines()[1:]]
        for scenario, (judged, info) in TARGETS.items():
            verdicts = [line.split()[0] for line in lines if _row_scenario(line[6:]) == scenario]
            if scenario == "B8" and _bench.aiohttp_available():
                judged, info = judged + 1, info - 1
            assert sum(v in ("PASS", "MISS") for v in verdicts) == judged, (scenario, verdicts)
            assert verdicts.count("INFO") == info, (scenario, verdicts)


class TestArguments:
    """The command's options: help, sizes, scenario selection and their errors."""

    def test_help_lists_the_options(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        for option in ("--quick", "--full", "--repeat", "--only", "--check", "--plot"):
            assert option in out

    def test_full_and_quick_exclude_each_other(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--full", "--quick"]) == 2
        assert "not allowed" in capsys.readouterr().err

    def test_unknown_scenario_is_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--quick", "--only", "B1,B12"]) == 2
        assert "B12" in capsys.readouterr().err

    def test_repeat_must_be_positive(self) -> None:
        assert main(["--quick", "--repeat", "0"]) == 2

    def test_module_entry_dispatches_to_bench(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tasker.__main__ import main as entry

        seen: list[list[str]] = []

        def fake_main(args: list[str]) -> int:
            seen.append(args)
            return 7

        monkeypatch.setattr(_bench, "main", fake_main)
        assert entry(["bench", "--quick"]) == 7
        assert seen == [["--quick"]]


class TestReport:
    """What the table and its helpers compute."""

    def test_percentiles_are_nearest_rank(self) -> None:
        samples = [float(i) for i in range(100, 0, -1)]
        assert percentiles(samples) == (50.0, 95.0, 99.0)
        assert percentiles([3.0]) == (3.0, 3.0, 3.0)

    def test_a_figure_without_a_bound_says_info_and_never_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        text = format_table([], [Target("B11", "memory per pending task", "300 B", None)])
        assert "INFO  B11  memory per pending task: 300 B" in text
        drained = {
            "tasker": _bench.DrainResult("tasker", 10, 2.0, 3000, 0),
            "bare actor pool": _bench.DrainResult("bare actor pool", 10, 1.0, 2000, 0),
        }
        monkeypatch.setattr(_bench, "drain_queue", lambda impl, n: drained[impl])
        assert main(["--quick", "--only", "B11", "--check"]) == 0  # 2 x: met; memory: INFO

    def test_a_missed_target_says_miss(self) -> None:
        rows = [Row("B1", "tasker", 1000.0, 0.25, None, 2**20, note="n")]
        text = format_table(rows, [Target("B1", "ratio", "0.25 x", False), Target("B6", "record", "1 us", True)])
        assert "MISS  B1  ratio: 0.25 x" in text
        assert "PASS  B6  record: 1 us" in text
        assert "1,000" in text and "0.25" in text and "1.0" in text

    def test_check_fails_the_command_on_a_miss(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_bench, "collector_costs", lambda records: _bench.CollectorResult(1, 5.0, 0.1, 0, 0, 0))
        assert main(["--quick", "--only", "B6"]) == 0
        assert main(["--quick", "--only", "B6", "--check"]) == 1


class TestBareActorPool:
    """The reference baseline is a working pool, so that its ratios mean something."""

    def test_replies_with_values_and_exceptions(self) -> None:
        pool = BareActorPool(3)
        try:
            replies = [pool.submit((lambda n: lambda: n * n)(i)) for i in range(10)]
            assert [r.get() for r in replies] == [i * i for i in range(10)]
            with pytest.raises(ZeroDivisionError):
                pool.call(lambda: 1 / 0)
        finally:
            pool.close()
