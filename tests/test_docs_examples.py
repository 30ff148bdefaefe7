"""Every ```python block of README.md and docs/**/*.md runs, as written.

Each page is one test: its Python blocks run in order in one namespace (a later block may use what an
earlier one defined, as a reader would), in a fresh temporary working directory, under a fixed seed.
A failure's traceback names the page and the line in it. One thread: the examples are tiny, and a
busy machine cannot slow them tenfold by oversubscription. A block that cannot run here (it needs a
GPU, a download, hours) is marked by the line right above it, which the reader sees as a sentence:

    *Not run by the tests: needs a CUDA device.*

Such a block is still compiled, so it cannot hold a syntax error. Blocks in other languages (bash,
plain text, output) are not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = re.compile(r"^\*Not run by the tests: (?P<reason>\S.*)\*$")
OPENING_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its first code line (1-based), its code, and why it is not run."""

    line: int
    code: str
    skip: str | None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown page, in order, each with its skip reason (None: run it).

    A fence closes on a line of the same character, at least as long, with nothing after it, so a
    longer fence can show a shorter one inside. The skip mark is the nearest non-blank line above.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = OPENING_FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        closing = re.compile(re.escape(fence[0]) + f"{{{len(fence)},}}\\s*")
        end = i + 1
        while end < len(lines) and not closing.fullmatch(lines[end]):
            end += 1
        if info.split()[:1] == ["python"]:
            above = next((line for line in reversed(lines[:i]) if line.strip()), "")
            mark = SKIP_MARK.match(above.strip())
            blocks.append(Block(i + 2, "\n".join(lines[i + 1 : end]), mark["reason"] if mark else None))
        i = end + 1
    return blocks


def pages() -> list[Path]:
    docs = ROOT / "docs"
    return [ROOT / "README.md", *sorted(p for p in docs.rglob("*.md") if "_build" not in p.parts)]


PAGES_WITH_CODE = [p for p in pages() if python_blocks(p.read_text())]


def test_the_parser_finds_python_blocks_their_lines_and_skip_marks():
    page = "\n".join(
        [
            "# Title",  # 1
            "```python",  # 2
            "a = 1",  # 3
            "```",  # 4
            "*Not run by the tests: needs a CUDA device.*",  # 5
            "",  # 6
            "```python",  # 7
            "b = a.cuda()",  # 8
            "```",  # 9
            "````markdown",  # 10: a longer fence shows a shorter one inside
            "```python",  # 11
            "not = code",  # 12
            "```",  # 13
            "````",  # 14
            "```bash",  # 15
            "echo not python",  # 16
            "```",  # 17
            "*Not run by the tests:*",  # 18: a mark without a reason is no mark
            "```python",  # 19
            "c = 3",  # 20
            "d = 4",  # 21
            "```",  # 22
        ]
    )
    assert python_blocks(page) == [
        Block(3, "a = 1", None),
        Block(8, "b = a.cuda()", "needs a CUDA device."),
        Block(20, "c = 3\nd = 4", None),
    ]


def test_every_page_with_examples_is_collected():
    # The check can fail: a page left out of the walk, or a fence the parser no longer sees.
    names = {p.relative_to(ROOT).as_posix() for p in PAGES_WITH_CODE}
    assert {"README.md", "docs/tutorial.md", "docs/howto/own_model.md", "docs/pass.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_examples_of_the_page_run(page: Path, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # examples write runs/, checkpoints, reports: never into the checkout
    namespace: dict = {"__name__": "__main__"}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for block in python_blocks(page.read_text()):
            # Padded so that tracebacks give the line in the Markdown file. A block that is not run
            # still has to compile: a typo in it fails here.
            code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
            if block.skip is None:
                exec(code, namespace)
