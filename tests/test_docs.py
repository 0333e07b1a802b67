"""Every Python code block of README.md and docs/ runs here, or says why it does not.

A fenced block is Python when its info string is ``python`` (or ``py``/``python3``).
The blocks of one page run in order, in one namespace, so a page may define its
stand-ins (a fake connection, a ``make_session``) in a first block that the reader sees.
A block that cannot run here is marked by an HTML comment on the line right before its
fence, which Markdown renderers do not show:

- ``<!-- not-run: REASON -->``: it needs what the test suite has not (a broker, a real
  network, structlog, a gunicorn master), or is a fragment of an example that runs
  elsewhere; REASON must say which;
- ``<!-- seed example: NAME -->``: a Go docs example, run by ``test_seed_examples.py``,
  which also checks what it prints.

Each page's blocks run under the suite's watchdog and its check that no manager is left
running, so an example that leaks a manager fails too. Nothing here needs mkdocs: the
README's test command installs only ``.[test]``; CI builds the site itself.

The README is also held to its brief: under 1,200 words, its two quick-start commands
first, the test command the one ``.ci/run`` runs, and its links into docs/ alive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")
NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>.*?) -->$")
SEED = re.compile(r"^<!-- seed example: (?P<name>[^>]+?) -->$")
README_WORD_LIMIT = 1200
QUICK_START = ['pip install -e ".[test]" && python -m tasker demo', 'pip install -e ".[test]" && pytest']


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    marker: str  # the line before the fence

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.info.lower() in PYTHON

    @property
    def not_run_reason(self) -> str | None:
        match = NOT_RUN.match(self.marker)
        return None if match is None else match["reason"].strip()

    @property
    def seed_example(self) -> bool:
        return SEED.match(self.marker) is not None

    @property
    def runs_here(self) -> bool:
        return self.is_python and self.not_run_reason is None and not self.seed_example


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order (fences at any indentation)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        match = FENCE.match(stripped)
        if match is None:
            i += 1
            continue
        indent = len(lines[i]) - len(stripped)
        fence = match["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].lstrip().startswith(fence):
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        assert j < len(lines), f"{page.relative_to(ROOT)}:{i + 1}: fence never closed"
        marker = lines[i - 1].strip() if i > 0 else ""
        found.append(Block(page, i + 1, match["info"], "\n".join(body) + "\n", marker))
        i = j + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
RUNNABLE_PAGES = sorted({block.page for block in ALL_BLOCKS if block.runs_here})


def test_the_pages_have_python_blocks() -> None:
    """The scanner finds what it should (a regex gone wrong would make every test vacuous)."""
    python = [block for block in ALL_BLOCKS if block.is_python]
    assert len(python) >= 20, [block.name for block in python]
    assert any(block.runs_here for block in python)
    assert sum(block.seed_example for block in python) == 2


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.is_python], ids=lambda b: b.name)
def test_every_python_block_runs_or_says_why(block: Block) -> None:
    reason = block.not_run_reason
    assert reason is None or len(reason) >= 10, f"{block.name}: a not-run marker must give its reason"
    if reason is not None or block.seed_example:
        return
    assert "--8<--" not in block.code, f"{block.name}: an included file runs in its own test; mark the block"


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in blocks(page):
        if block.runs_here:
            exec(compile(block.code, block.name, "exec"), namespace)


def test_readme_is_short() -> None:
    words = len(README.read_text().split())
    assert words < README_WORD_LIMIT, f"README.md has {words} words; the rest belongs in docs/"


def test_readme_starts_with_the_two_quick_start_commands() -> None:
    first = blocks(README)[0]
    assert first.code.splitlines() == QUICK_START
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert QUICK_START[1] in ci, ".ci/run must run the README's test command as it is written"


def test_readme_links_into_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert len(links) >= 10, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
