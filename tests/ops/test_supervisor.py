"""The supervisor of ``dai up``: a child that exits is restarted, with a delay that doubles up
to a cap and starts over once the child has stayed up; every exit and restart is said."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from democratic_ai.ops.supervisor import Backoff, Supervisor, describe_exit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _exits(code: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])


def _settle(supervisor: Supervisor) -> None:
    for process in supervisor.processes:
        process.wait(timeout=30)


def test_a_child_that_keeps_exiting_is_restarted_with_doubling_delays_up_to_the_cap() -> None:
    said: list[str] = []
    clock = Clock()
    supervisor = Supervisor(said.append, Backoff(initial_delay=0.5, max_delay=2.0, stable_after=60), clock=clock)
    supervisor.start("worker", lambda: _exits(3))
    delays = []
    for _ in range(4):
        _settle(supervisor)
        supervisor.poll()
        match = re.fullmatch(
            r"dai: \d\d:\d\d:\d\d worker \(pid \d+\) exited with code 3 after [\d.]+ s;"
            r" restarting it in ([\d.]+) s",
            said[-1],
        )
        assert match is not None, said[-1]
        delay = float(match.group(1))
        delays.append(delay)
        clock.now += delay - 0.01
        supervisor.poll()
        assert not supervisor.processes  # not before its delay
        clock.now += 0.01
        supervisor.poll()
        assert re.fullmatch(r"dai: \d\d:\d\d:\d\d worker restarted \(pid \d+\)", said[-1])
    assert delays == [0.5, 1.0, 2.0, 2.0]
    assert supervisor.restarts == 4
    supervisor.stop()


def test_the_delay_starts_over_once_a_child_stayed_up() -> None:
    said: list[str] = []
    clock = Clock()
    supervisor = Supervisor(said.append, Backoff(initial_delay=0.5, max_delay=30, stable_after=10), clock=clock)
    supervisor.start("worker", lambda: _exits(1))
    for _ in range(3):  # 0.5, 1, 2
        _settle(supervisor)
        supervisor.poll()
        clock.now += 5
        supervisor.poll()
    assert "restarting it in 2 s" in said[-2]
    clock.now += 10  # the last start was 10 s ago: it stayed up long enough
    _settle(supervisor)
    supervisor.poll()
    assert said[-1].endswith("restarting it in 0.5 s")
    supervisor.stop()


def test_stop_ends_every_child_and_nothing_restarts_after() -> None:
    said: list[str] = []
    supervisor = Supervisor(said.append)
    # A child that would run for a minute: only the stop ends it.
    sleeper = supervisor.start(
        "sleeper", lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    )
    supervisor.stop(timeout=10)
    assert sleeper.poll() is not None
    supervisor.poll()
    assert supervisor.restarts == 0 and said == []


@pytest.mark.parametrize(
    ("code", "text"), [(0, "code 0"), (3, "code 3"), (-9, "signal SIGKILL"), (-15, "signal SIGTERM")]
)
def test_exit_codes_are_described(code: int, text: str) -> None:
    assert describe_exit(code) == text


def test_an_adopted_process_is_restarted_but_left_to_its_owner_at_stop() -> None:
    said: list[str] = []
    clock = Clock()
    supervisor = Supervisor(said.append, clock=clock)
    owned = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # runs until its owner ends it
    try:
        supervisor.adopt("bus", _exits(0), lambda: owned)
        _settle(supervisor)
        supervisor.poll()
        clock.now += 0.5
        supervisor.poll()
        assert said[-1].endswith(f"bus restarted (pid {owned.pid})")
        supervisor.stop(timeout=5)
        assert owned.poll() is None  # its owner stops it, after everything that uses it
    finally:
        owned.kill()
        owned.wait()


def test_a_restart_that_fails_is_tried_again_later() -> None:
    said: list[str] = []
    clock = Clock()
    attempts: list[int] = []

    def spawn() -> subprocess.Popen[bytes]:
        attempts.append(1)
        if len(attempts) == 2:
            raise OSError("no such binary")
        return _exits(0)

    supervisor = Supervisor(said.append, clock=clock)
    supervisor.start("flaky", spawn)
    _settle(supervisor)
    supervisor.poll()
    clock.now += 0.5
    supervisor.poll()
    assert "could not restart flaky (no such binary); trying again in 1 s" in said[-1]
    clock.now += 1
    supervisor.poll()
    assert said[-1].endswith(f"flaky restarted (pid {supervisor.processes[0].pid})")
    supervisor.stop()
