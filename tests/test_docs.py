"""Docs that cannot rot: every example in README.md and docs/ runs as printed.

The convention, for the fenced code blocks of README.md and docs/**/*.md:

* a ```python block runs in the default suite, unless the line before it is ``<!-- slow -->``
  (then it runs only under ``-m slow``);
* a ```python block after ``<!-- file: PATH -->`` is written to PATH (relative to the page's
  folder) instead of being run, for later blocks and commands to import;
* a ```bash / ```console block runs in the default suite (every line, ``bash -e``; in a
  console block, the lines starting with ``$ ``), unless it is marked ``<!-- long-run -->``
  (training at full size, installs, clusters, benchmarks: shown, never run) or
  ``<!-- slow -->`` (run only under ``-m slow``);
* blocks of other languages (```text, ```yaml, plain ```) are not run.

The blocks of one page run in order, in one temporary folder per page (holding links to the
repository's ``results/`` and ``scripts/``, so commands read as from the repository root), with
``PYTHONPATH`` set to the repository root, so later blocks see the files earlier ones wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
NOT_RUN = {"", "text", "yaml", "toml", "json", "plain"}
MARKERS = {"slow", "long-run"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
COMMENT = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    markers: set[str] = field(default_factory=set)
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` with the marker comments right above each."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]) + "\n"
        block = Block(page, i + 1, lang.lower(), code)
        k = i - 1
        while k >= 0 and (comment := COMMENT.match(lines[k])):
            text = comment.group(1)
            if text.startswith("file:"):
                block.file = text.removeprefix("file:").strip()
            elif text in MARKERS:
                block.markers.add(text)
            k -= 1
        out.append(block)
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def runs_by_default(block: Block) -> bool:
    return block.lang in SHELL | {"python"} and not block.markers


def test_every_block_is_run_written_or_marked():
    """Each block's language is known; every shell block is run or marked as a long run;
    every Python block runs (by default or in the slow suite) or is a file."""
    problems = []
    for b in ALL:
        if b.lang not in SHELL | NOT_RUN | {"python"}:
            problems.append(f"{b.where}: unknown language {b.lang!r}")
        if b.lang == "python" and "long-run" in b.markers:
            problems.append(f"{b.where}: Python examples run (mark a long one <!-- slow -->)")
        if b.file and b.lang != "python":
            problems.append(f"{b.where}: <!-- file: --> is for Python blocks")
        if b.markers and b.lang in NOT_RUN:
            problems.append(f"{b.where}: a {b.lang or 'plain'} block is never run; drop its marker")
    assert not problems, "\n".join(problems)
    assert sum(b.lang == "python" for b in ALL) >= 5
    assert any(b.lang in SHELL and not b.markers for b in ALL)


def shell_commands(block: Block) -> str:
    if block.lang != "console":
        return block.code
    return "\n".join(line[2:] for line in block.code.splitlines() if line.startswith("$ "))


def run_page(page: Path, tmp_path: Path, slow: bool) -> int:
    """Run the page's blocks in order in ``tmp_path``; returns how many ran."""
    for name in ("results", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MPLBACKEND"] = "Agg"
    ran = 0
    for n, b in enumerate(blocks(page)):
        if b.file:
            target = tmp_path / b.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.code)
            continue
        if b.lang not in SHELL | {"python"} or "long-run" in b.markers:
            continue
        if "slow" in b.markers and not slow:
            continue
        if b.lang == "python":
            script = tmp_path / f"_docs_block_{n}.py"
            script.write_text(b.code)
            command = [sys.executable, script.name]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", shell_commands(b)]
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"{b.where} ({b.lang}) failed with exit code {result.returncode}:\n"
            f"{b.code}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
        ran += 1
    return ran


DEFAULT_PAGES = [p for p in PAGES if any(runs_by_default(b) for b in blocks(p))]
SLOW_PAGES = [p for p in PAGES if any("slow" in b.markers for b in blocks(p))]


@pytest.mark.parametrize("page", DEFAULT_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, tmp_path):
    assert run_page(page, tmp_path, slow=False) > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run_with_the_slow_ones(page, tmp_path):
    assert run_page(page, tmp_path, slow=True) > 0
