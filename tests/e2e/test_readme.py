"""Every example of the README runs as written, in order, against a real ``dai up``.

The test stands where a new user stands after the README's first command: a folder holding
``.venv`` (this test run's own environment) and nothing else. It starts ``dai up`` there, as the
first command ends by doing, on free ports (the README's 8080 and 4222 are rewritten to them, so
a platform already running on this machine is left alone), and then runs every ``sh`` block in
one shell, as a user pasting them into one terminal would (see ``tests/support/readme.py`` for the
few blocks read otherwise). A block fails the test when a command in it fails: ``curl`` runs with
``--fail-with-body`` (unless it prints the status code with ``-w``: that example shows an error on
purpose) and ``jq`` with ``-e`` (a missing field is an error, not ``null``), and any
Python traceback in what a block prints is a failure too.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from democratic_ai.ops.ports import free_port

from support.paths import REPO
from support.readme import Block, read_blocks

pytestmark = pytest.mark.slow

README = REPO / "README.md"
BLOCK_TIMEOUT = 180.0
DONE = "@@readme-block-done@@"
PREAMBLE = """set -eu
curl() {  # an HTTP error fails the block, unless the example prints the status on purpose
    case " $* " in  # (or fails on its own, with -f)
        *" -w "* | *" --write-out "* | *" -f "* | *" --fail "*) command curl "$@" ;;
        *) command curl --fail-with-body "$@" ;;
    esac
}
jq() { command jq -e "$@"; }
"""


def test_every_shell_block_is_run_or_says_why_not() -> None:
    blocks = read_blocks(README)
    shell = [block for block in blocks if block.language == "sh"]
    assert shell, "the README has no shell examples"
    for block in shell:
        assert block.action == "run" or block.reason, f"{block.where()}: skipped without a reason"
    assert [b for b in shell if b.action == "run"], "every shell block is skipped"


def _clean_environment() -> dict[str, str]:
    """This machine's environment without the test session's servers, keys and credentials."""
    drop = ("NATS_URL", "DATABASE_URL", "DATABASE_APP_URL", "NATS_CA_FILE")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DAI_")}


class Shell:
    """One bash, fed block after block; what it prints is collected line by line."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=folder,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def run(self, block: Block, script: Path) -> str:
        self._send(f"source {script}\necho {DONE}\n")
        output: list[str] = []
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{block.where()} did not finish within {BLOCK_TIMEOUT:g} s:\n" + "".join(output)
                ) from None
            if line is None:
                raise AssertionError(
                    f"{block.where()} failed (exit {self.process.wait()}):\n{block.text}\n"
                    f"--- it printed:\n" + "".join(output)
                )
            if DONE in line:  # the block's last line may not end in a newline
                output.append(line.split(DONE)[0])
                return "".join(output)
            output.append(line)

    def close(self) -> None:
        """Ctrl-C to what a block left running in the background (as a user would), then the shell."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # the shell ended: a block failed
            children = []
        for child in children:
            try:
                child.send_signal(signal.SIGINT)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(children, timeout=15)
        for child in alive:
            child.kill()
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_platform(
    folder: Path, env: dict[str, str], port: int, nats_port: int
) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [str(folder / ".venv" / "bin" / "dai"), "up", "--port", str(port), "--nats-port", str(nats_port)],
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    printed: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        printed.append(line)
        if line.startswith("Press Ctrl-C"):
            threading.Thread(target=lambda: [printed.append(x) for x in process.stdout], daemon=True).start()
            return process, printed
    process.kill()
    raise AssertionError("dai up did not come up:\n" + "".join(printed))


def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    for tool in ("curl", "jq", "bash", "base64"):
        if shutil.which(tool) is None:
            message = f"the README's examples use {tool}; install it to run them"
            if os.environ.get("CI"):
                pytest.fail(message)  # .ci/run installs them: in CI a missing tool is a broken machine
            pytest.skip(message)
    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / ".venv").symlink_to(Path(sys.prefix))
    env = _clean_environment()
    port, nats_port = free_port(), free_port()
    ports = {"127.0.0.1:8080": f"127.0.0.1:{port}", "127.0.0.1:4222": f"127.0.0.1:{nats_port}"}
    platform, printed = _start_platform(folder, env, port, nats_port)
    shell = Shell(folder, env)
    try:
        preamble = tmp_path / "preamble.sh"
        preamble.write_text(PREAMBLE)
        shell.run(Block("sh", PREAMBLE, 0, "run"), preamble)
        for number, block in enumerate(read_blocks(README)):
            text = block.text
            for written, actual in ports.items():
                text = text.replace(written, actual)
            if block.action != "run":
                continue
            script = tmp_path / f"block-{number:03d}-line-{block.line}.sh"
            script.write_text(text)
            output = shell.run(block, script)
            assert "Traceback (most recent call last)" not in output, f"{block.where()}:\n{output}"
    finally:
        try:
            shell.close()
        finally:
            code = _stop_platform(platform)
    assert code == 0, "".join(printed)


def _stop_platform(platform: subprocess.Popen[str]) -> int:
    """Ctrl-C, as the README says; a platform that will not stop is killed and fails the test."""
    platform.send_signal(signal.SIGINT)
    try:
        return platform.wait(timeout=60)
    except subprocess.TimeoutExpired:
        platform.kill()
        platform.wait()
        raise AssertionError("dai up did not stop within 60 s of Ctrl-C") from None
