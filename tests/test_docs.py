"""The code on README.md and docs/*.md runs as pasted and prints what the page shows.

Each page's fenced blocks run in document order in ONE fresh subprocess (`sys.executable`), whose
working directory is a new temporary directory holding a copy of ``tests/data/lerobot_v3_ref`` at
the same relative path (so a page that says "run from the repository root" works unchanged). Every
block gets a fresh namespace: it must import what it uses. Blocks share the directory, so one block
can write a dataset that a later block reads. What runs:

- ```` ```python ```` blocks: executed. A block that starts with ``>>>`` is a doctest (run with
  ``doctest``, its own output lines are the expectation). A block whose first line is a comment
  naming a file (``# my_nodes.py``) is written to that file instead of being executed.
- ```` ```console ```` blocks: each ``$ command`` line runs in bash (``$?`` is the previous
  command's exit code); the expectation is the block itself, commands and their stdout.
  ``python -m streamnodes ARGS`` runs as ``streamnodes.__main__.main(ARGS)`` in the page's process
  (the same entry point and arguments, without importing torch again for every command).
- A plain ```` ``` ```` or ```` ```text ```` block that follows a python block with only blank
  lines between is that block's expected stdout. A python block without one must print nothing.
  ```` ```bash ```` blocks and other plain/text blocks (diagrams, file trees, recorded transcripts)
  are not run.

Normalisation before comparing (nothing else): the temporary working directory is written
``/tmp/work`` on the pages, trailing whitespace of every line and trailing blank lines are ignored,
and ``...`` in an expected output matches any text (``doctest.ELLIPSIS``), used only where output
holds times. Stdout only: warnings and logs on stderr are not compared.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REF = REPO / "tests" / "data" / "lerobot_v3_ref"
PLACEHOLDER_CWD = "/tmp/work"
MARKER = "\x1e streamnodes-docs block {} \x1e"
FENCE = re.compile(r"^```(\S*)\s*$")
FILE_HEADER = re.compile(r"^# ([\w./-]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language tag, text and the line its fence opens on."""

    lang: str
    text: str
    line: int
    blank_before: bool  # only blank lines between this block and the previous one


@dataclass(frozen=True)
class Step:
    """What the page driver does with a block, and what its stdout must be (None: not compared)."""

    kind: str  # "script", "doctest", "file", "console"
    code: str
    line: int
    expected: str | None


def parse_blocks(markdown: str) -> list[Block]:
    """The fenced blocks of a markdown text, in order."""
    blocks, lines, i, last_end = [], markdown.splitlines(), 0, None
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        between = lines[last_end + 1 : start] if last_end is not None else ["x"]
        blocks.append(Block(match.group(1), "\n".join(body) + "\n", start + 1, all(not s.strip() for s in between)))
        last_end = i
        i += 1
    return blocks


def plan_steps(blocks: list[Block]) -> list[Step]:
    """Pair python blocks with the output block right after them; console blocks are their own expectation."""
    steps = []
    for k, block in enumerate(blocks):
        if block.lang == "python":
            following = blocks[k + 1] if k + 1 < len(blocks) else None
            output = following.text if following and following.lang in ("", "text") and following.blank_before else ""
            if block.text.lstrip().startswith(">>>"):
                steps.append(Step("doctest", block.text, block.line, ""))
            elif FILE_HEADER.match(block.text.splitlines()[0]):
                steps.append(Step("file", block.text, block.line, None))
            else:
                steps.append(Step("script", block.text, block.line, output))
        elif block.lang == "console":
            steps.append(Step("console", block.text, block.line, block.text))
    return steps


# Runs in the page's subprocess: argv[1] is a JSON list of steps, argv[2] the page name.
DRIVER = r"""
import contextlib, doctest, io, json, os, re, subprocess, sys, traceback
steps, page = json.load(open(sys.argv[1])), sys.argv[2]
marker = sys.argv[3]
for n, step in enumerate(steps):
    sys.stdout.flush()
    print(marker.format(n), flush=True)
    try:
        if step["kind"] == "script":
            exec(compile(step["code"], f"{page}:{step['line']}", "exec"), {"__name__": "__main__"})
        elif step["kind"] == "doctest":
            test = doctest.DocTestParser().get_doctest(step["code"], {"__name__": "__main__"}, page, page, step["line"])
            doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=sys.stdout.write)
        elif step["kind"] == "file":
            name = re.match(r"# ([\w./-]+\.py)", step["code"]).group(1)
            with open(name, "w") as f:
                f.write(step["code"])
        elif step["kind"] == "console":
            rc = 0
            for line in step["code"].splitlines():
                if line.startswith("$ "):
                    print(line, flush=True)
                    cli = re.fullmatch(r"python -m streamnodes ([\w./ -]+)", line[2:])
                    if cli:  # the CLI's own entry point, in this process: saves importing torch per command
                        from streamnodes.__main__ import main
                        out = io.StringIO()
                        with contextlib.redirect_stdout(out):
                            rc = main(cli.group(1).split())
                        sys.stdout.write(out.getvalue())
                        continue
                    done = subprocess.run(["bash", "-c", f"(exit {rc}); {line[2:]}"], stdout=subprocess.PIPE, text=True)
                    sys.stdout.write(done.stdout)
                    rc = done.returncode
    except BaseException:
        print(f"EXCEPTION in block at {page}:{step['line']}:\n" + traceback.format_exc())
    sys.stdout.flush()
"""


def normalise(text: str, cwd: Path) -> str:
    for path in {str(cwd), os.path.realpath(cwd)}:
        text = text.replace(path, PLACEHOLDER_CWD)
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def run_page(page: Path, workdir: Path) -> tuple[list[Step], list[str]]:
    """Run a page's steps in one subprocess; return the steps and each one's normalised stdout."""
    steps = plan_steps(parse_blocks(page.read_text()))
    shutil.copytree(REF, workdir / "tests" / "data" / "lerobot_v3_ref")
    for path in (workdir / "tests").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    plan = workdir.parent / f"{page.stem}-steps.json"
    plan.write_text(json.dumps([step.__dict__ for step in steps]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(plan), page.name, MARKER],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"{page.name}: the page driver failed\n{done.stderr[-3000:]}"
    parts = re.split(re.escape(MARKER).replace(r"\{\}", r"\d+") + r"\n", done.stdout)
    assert len(parts) == len(steps) + 1, f"{page.name}: {len(parts) - 1} of {len(steps)} blocks reported\n{done.stderr[-3000:]}"
    return steps, [normalise(part, workdir) for part in parts[1:]]


def outputs_match(expected: str, got: str) -> bool:
    want = "\n".join(line.rstrip() for line in expected.rstrip().splitlines())
    return want == got or doctest.OutputChecker().check_output(want + "\n", got + "\n", doctest.ELLIPSIS)


RUN_PAGES = [page for page in PAGES if plan_steps(parse_blocks(page.read_text()))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[page.name for page in RUN_PAGES])
def test_page_code_runs_and_prints_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    steps, outputs = run_page(page, workdir)
    failures = [
        f"{page.relative_to(REPO)}:{step.line} ({step.kind}) printed:\n{got}\n--- the page shows:\n{step.expected.rstrip()}"
        for step, got in zip(steps, outputs, strict=True)
        if step.expected is not None and not outputs_match(step.expected, got)
    ]
    assert not failures, "\n\n".join(failures)


def test_every_page_with_python_or_console_blocks_is_run() -> None:
    for page in PAGES:
        langs = {block.lang for block in parse_blocks(page.read_text())}
        assert not langs & {"python", "console"} or page in RUN_PAGES, page


def test_pages_stand_on_their_own() -> None:
    """No page or source comment cites a design document outside the repository; relative links resolve."""
    texts = {page: page.read_text() for page in PAGES}
    texts |= {path: path.read_text() for path in (REPO / "src").rglob("*.py")}
    for path, text in texts.items():
        assert "DESIGN" not in text and "../shared" not in text, f"{path} cites a file outside the repository"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", texts[page]):
            if not re.match(r"[a-z]+://", target):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_plan_pairs_python_blocks_with_the_output_right_after_them() -> None:
    page = (
        "```python\nprint(1)\n```\n\n```\n1\n```\n\ntext\n\n```python\nprint(2)\n```\nprose\n\n```\n2\n```\n"
        "```python\n>>> 1 + 1\n2\n```\n```python\n# mod.py\nX = 1\n```\n```console\n$ echo hi\nhi\n```\n```bash\nls\n```\n"
    )
    steps = plan_steps(parse_blocks(page))
    assert [(s.kind, s.expected) for s in steps] == [
        ("script", "1\n"), ("script", ""), ("doctest", ""), ("file", None), ("console", "$ echo hi\nhi\n")
    ]
    assert outputs_match("a ... c\n", "a 12.5 s c") and not outputs_match("a b", "a c")
