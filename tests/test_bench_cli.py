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
    "B4": ("tasker", "bare actor pool", "gevent Pool", "ThreadPoolExecutor"),
    "B5": ("tasker scaler",),
    "B6": ("tasker Collector",),
    "B7": ("tasker workers", "parked greenlets"),
}


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    """One ``python -m tasker bench --quick`` in a subprocess, shared by the tests that read it."""
    return subprocess.run(
        [sys.executable, "-m", "tasker", "bench", "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


class TestQuickRun:
    """``--quick`` runs B1-B7 in seconds, exits 0 and prints a row for every implementation."""

    def test_exits_zero(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        assert quick_run.returncode == 0, quick_run.stderr

    @pytest.mark.parametrize("scenario", sorted(ROWS))
    def test_prints_every_row_of_the_scenario(self, quick_run: subprocess.CompletedProcess[str], scenario: str) -> None:
        table = [line for line in quick_run.stdout.splitlines() if line.startswith(f"{scenario}  ")]
        impls = [line[len(scenario) :].strip() for line in table]
        for impl in ROWS[scenario]:
            assert any(i.startswith(impl + "  ") for i in impls), (impl, table)
        assert len(table) == len(ROWS[scenario]), table

    def test_throughput_rows_have_a_rate_and_a_ratio(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        for line in quick_run.stdout.splitlines():
            if line[:2] in ("B1", "B2", "B3", "B4"):
                cells = line.split("  ")
                numbers = [c.strip() for c in cells if c.strip()][2:4]
                assert float(numbers[0].replace(",", "")) > 0, line
                assert float(numbers[1]) > 0, line
            if line.startswith("B1  ") and "bare actor pool" in line:
                assert " 1.00 " in line  # the reference of B1-B4 is itself

    def test_reports_every_target(self, quick_run: subprocess.CompletedProcess[str]) -> None:
        out = quick_run.stdout
        targets = out[out.index("targets (BENCH.md):") :].splitlines()[1:]
        verdicts = [line.split()[:2] for line in targets if line.strip().startswith(("PASS", "MISS"))]
        assert {scenario for _, scenario in verdicts} == set(ROWS)
        assert len(verdicts) == 12


class TestArguments:
    """The command's options: help, sizes, scenario selection and their errors."""

    def test_help_lists_the_options(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        for option in ("--quick", "--full", "--repeat", "--only", "--check"):
            assert option in out

    def test_full_and_quick_exclude_each_other(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--full", "--quick"]) == 2
        assert "not allowed" in capsys.readouterr().err

    def test_unknown_scenario_is_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--quick", "--only", "B1,B9"]) == 2
        assert "B9" in capsys.readouterr().err

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
