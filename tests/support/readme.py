"""The README's examples, read as a test reads them.

Every fenced ``sh`` block of README.md runs, in the order written, in one shell (variables a
block sets are there for the next). A block is read otherwise only when an HTML comment — which
GitHub does not show — right above its fence says so:

* ``<!-- readme-test: skip: REASON -->`` — not run; the reason names what runs it instead.

Blocks in other languages (output, JSON, Python, JavaScript) are not run. (What runs in a second
terminal in real life, such as a module, the README starts in the background with ``&``.)
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "read_blocks", "run_script", "section_scripts"]

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based
    action: str  # "run", "skip" or "show" (not a shell block)
    reason: str = ""  # why a skipped block is not run

    def where(self) -> str:
        return f"README.md:{self.line}"


def _action(language: str, directive: str | None, line: int) -> tuple[str, str]:
    if directive is None:
        return ("run", "") if language == "sh" else ("show", "")
    if directive.startswith("skip:") and directive[5:].strip():
        return "skip", directive[5:].strip()
    raise ValueError(f"README.md:{line}: a readme-test comment this runner does not know: {directive!r}")


def read_blocks(readme: Path) -> list[Block]:
    blocks: list[Block] = []
    directive: str | None = None
    lines = readme.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        text = lines[index]
        found = _DIRECTIVE.match(text)
        if found:
            directive = found.group(1)
            index += 1
            continue
        fence = _FENCE.match(text)
        if fence is None:
            if text.strip():
                directive = None  # a directive belongs to the fence right below it
            index += 1
            continue
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"README.md:{start + 1}: a code fence that is never closed")
        action, reason = _action(fence.group(1), directive, start + 1)
        blocks.append(Block(fence.group(1), "\n".join(body) + "\n", start + 1, action, reason))
        directive = None
        index += 1
    return blocks


def section_scripts(readme: Path, heading: str) -> list[str]:
    """The ``sh`` blocks of the README's section ``heading`` (e.g. ``"## The console"``), in order,
    for a test that runs one section's example against the session's servers."""
    text = readme.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n```", 1)[0] for block in section.split("```sh\n")[1:]]


async def run_script(script: str, *, cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[str, str]:
    """Run ``script`` as the README runs, in ``bash -euo pipefail``; its stdout and stderr once it
    exits 0. Asynchronous: the gateway it calls may run in this test's event loop."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode == 0, err.decode()
    return out.decode(), err.decode()
