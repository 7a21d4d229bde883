"""Keeping ``dai up``'s platform processes running: restart a child that exits, with backoff.

A child that exits (crashed, killed, or stopped on its own) is started again after a delay
that begins at ``initial_delay`` and doubles with each exit up to ``max_delay``; once a child
has stayed up for ``stable_after`` seconds its next exit is again met with ``initial_delay``.
Each exit and each restart is said (which child, its exit code, when it restarts), so an
operator sees a crash loop in the log. Only :meth:`Supervisor.stop` ends the children.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .ports import ServerStartError

__all__ = ["Backoff", "Supervisor"]

Spawn = Callable[[], "subprocess.Popen[bytes]"]


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0  # seconds up after which a child's delay starts over

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay <= self.max_delay or self.stable_after <= 0:
            raise ValueError("Backoff needs 0 < initial_delay <= max_delay and a positive stable_after.")


class _Child:
    __slots__ = ("adopted", "delay", "name", "process", "restart_at", "spawn", "started")

    def __init__(self, name: str, spawn: Spawn, delay: float, adopted: bool = False) -> None:
        self.name, self.spawn, self.delay, self.adopted = name, spawn, delay, adopted
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_at: float | None = None


def describe_exit(code: int) -> str:
    """``code 3``, or ``signal SIGKILL`` for a child a signal ended (a negative returncode)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """The platform's child processes, each restarted with backoff when it exits."""

    def __init__(
        self, say: Callable[[str], None], backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._say = say
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._children: list[_Child] = []
        self._stopped = False
        self.restarts = 0

    def start(self, name: str, spawn: Spawn) -> subprocess.Popen[bytes]:
        """Start a child now; ``spawn`` is called again for every restart."""
        child = _Child(name, spawn, self.backoff.initial_delay)
        self._children.append(child)
        return self._launch(child)

    def adopt(self, name: str, process: subprocess.Popen[bytes], spawn: Spawn) -> None:
        """Watch a process started elsewhere and restart it with ``spawn``; :meth:`stop` leaves it
        to its owner (the bus must outlive the processes that drain into it)."""
        child = _Child(name, spawn, self.backoff.initial_delay, adopted=True)
        child.process, child.started = process, self._clock()
        self._children.append(child)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [c.process for c in self._children if c.process is not None]

    def first_exited(self) -> str | None:
        """The name of a child that has exited and not been restarted yet (for start-up checks)."""
        for child in self._children:
            if child.process is not None and child.process.poll() is not None:
                return child.name
        return None

    def poll(self) -> None:
        """Notice exits and start what is due; call it a few times a second."""
        if self._stopped:
            return
        now = self._clock()
        for child in self._children:
            process = child.process
            if process is not None:
                code = process.poll()
                if code is None:
                    if now - child.started >= self.backoff.stable_after:
                        child.delay = self.backoff.initial_delay
                    continue
                child.process = None
                if now - child.started >= self.backoff.stable_after:
                    child.delay = self.backoff.initial_delay
                child.restart_at = now + child.delay
                self._say(
                    f"dai: {time.strftime('%H:%M:%S')} {child.name} (pid {process.pid}) exited with"
                    f" {describe_exit(code)} after {now - child.started:.1f} s; restarting it in {child.delay:g} s"
                )
                child.delay = min(child.delay * 2, self.backoff.max_delay)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                try:
                    restarted = self._launch(child)
                except (OSError, ServerStartError) as exc:
                    child.restart_at = now + child.delay
                    self._say(
                        f"dai: {time.strftime('%H:%M:%S')} could not restart {child.name} ({exc});"
                        f" trying again in {child.delay:g} s"
                    )
                    child.delay = min(child.delay * 2, self.backoff.max_delay)
                    continue
                self.restarts += 1
                self._say(f"dai: {time.strftime('%H:%M:%S')} {child.name} restarted (pid {restarted.pid})")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every child, in reverse order of start; SIGKILL what is left after ``timeout``."""
        self._stopped = True
        running = [c.process for c in reversed(self._children) if c.process is not None and not c.adopted]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _launch(self, child: _Child) -> subprocess.Popen[bytes]:
        process = child.process = child.spawn()
        child.started = self._clock()
        return process
