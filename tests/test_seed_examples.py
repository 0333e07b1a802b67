"""The Go docs' examples, ported in docs/porting.md ("Porting from Go"), run as they are there.

Each example is a ``python`` code block of docs/porting.md preceded by a
``<!-- seed example: NAME -->`` line; the test runs the block and checks what the Go
example prints, so the porting guide cannot drift from the code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

PORTING = Path(__file__).resolve().parent.parent / "docs" / "porting.md"
BLOCK = re.compile(r"<!-- seed example: (?P<name>[^>]+?) -->\n```python\n(?P<code>.*?)```", re.S)


def examples() -> dict[str, str]:
    found = {m["name"]: m["code"] for m in BLOCK.finditer(PORTING.read_text())}
    assert set(found) == {"initialization", "custom logger and collector"}, sorted(found)
    return found


def run(name: str) -> None:
    code = compile(examples()[name], f"docs/porting.md seed example {name!r}", "exec")
    exec(code, {"__name__": "seed_example"})


def test_initialization(capsys: pytest.CaptureFixture[str]) -> None:
    run("initialization")
    lines = capsys.readouterr().out.splitlines()
    # Two base workers and a run_task pool of worker_count: four resources, each destroyed once.
    assert lines.count("INFO: Creating MyResource") == 4
    assert "TaskManager initialized and running." in lines
    destroyed = [line for line in lines if line.startswith("INFO: Destroying MyResource ")]
    assert len(destroyed) == len(set(destroyed)) == 4


def test_custom_logger_and_collector(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        run("custom logger and collector")
    lines = capsys.readouterr().out.splitlines()
    assert lines.count("Metric: Task Arrived") == 1
    completed = [line for line in lines if line.startswith("Metric: Task Completed (exec: ")]
    assert len(completed) == 1 and re.fullmatch(r"Metric: Task Completed \(exec: \d+\.\d{6}s\)", completed[0])
    assert "Metric: Task Failed" not in lines
    assert sum(1 for line in lines if line.startswith("Worker ") and line.endswith("custom logging/metrics")) == 1
