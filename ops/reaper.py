"""Nothing ``dai up`` starts outlives it, even when it is killed with SIGKILL or crashes.

Two mechanisms, because one process tree is not one thing:

- The Python children (bus-auth, hub, projections, gateway, modules) are started with
  ``PR_SET_PDEATHSIG`` = SIGTERM (Linux): the kernel tells each one the moment ``dai up`` dies,
  and each stops cleanly, draining into the bus that is still there.
- The embedded servers are watched by the **reaper**, a small process ``dai up`` starts first
  (``python -m democratic_ai.ops.reaper``). Its stdin is a pipe whose write end only ``dai up``
  holds, so end-of-file means ``dai up`` is gone, however it went. ``dai up`` writes each
  process it starts into the pipe (``<kind> <pid> <start time>``); at EOF the reaper stops the
  ones still running: the children first (SIGTERM, SIGKILL after 10 s), then nats-server
  (SIGTERM) and the postmaster (SIGINT, PostgreSQL's fast shutdown; SIGQUIT and SIGKILL if it
  does not go). pdeathsig cannot reach the postmaster: ``pg_ctl`` daemonizes it, and nats-server
  must stop *after* the services that drain into it. The start time guards against a recycled pid.

The reaper also holds a duplicate of the data dir's lock (:mod:`.datadir`), so the lock is free
only once everything is stopped, and the next ``dai up`` finds the ports and the store free.

:func:`stop_leftovers` is for what an earlier crash left running anyway (a ``dai up`` from before
the reaper existed, or a reaper that was itself killed): a postmaster on the data dir's ``pg``,
a nats-server on its store, a platform process marked with the data dir. ``dai up`` calls it once
it holds the lock, so anything still there is no one's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import psutil

__all__ = ["CHILD", "DATA_DIR_ENV", "NATS", "POSTGRES", "Reaper", "die_with_parent", "stop_leftovers"]

DATA_DIR_ENV = "DAI_UP_DATA_DIR"  # set in every platform process of a `dai up`: the data dir it belongs to
PR_SET_PDEATHSIG = 1
CHILD, NATS, POSTGRES = "child", "nats", "postgres"
CHILD_GRACE, SERVER_GRACE = 10.0, 20.0


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except OSError:
        pass  # the terminal or pipe of a dead `dai up` may be gone too


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded now: after fork only async-signal-safe work
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as gone); return those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _stop(children: list[psutil.Process], nats: list[psutil.Process], postgres: list[psutil.Process]) -> None:
    """Children first (SIGTERM, then SIGKILL), then the servers they use."""
    for proc in children:
        _signal(proc, signal.SIGTERM)
    for proc in _wait_gone(children, CHILD_GRACE):
        _signal(proc, signal.SIGKILL)
    _wait_gone(children, 2.0)
    for proc in nats:
        _signal(proc, signal.SIGTERM)
    for proc in postgres:
        _signal(proc, signal.SIGINT)  # fast shutdown: roll back, checkpoint, exit
    left = _wait_gone([*nats, *postgres], SERVER_GRACE)
    for proc in left:
        _signal(proc, signal.SIGKILL if proc in nats else signal.SIGQUIT)  # SIGQUIT: immediate shutdown
    for proc in _wait_gone(left, 5.0):
        _signal(proc, signal.SIGKILL)
    _wait_gone(left, 2.0)


class _Found(NamedTuple):
    kind: str  # CHILD, NATS or POSTGRES
    name: str  # for the log: "gateway", "nats-server", …
    proc: psutil.Process


def _names(found: Iterable[_Found]) -> str:
    """``gateway (pid 4712), nats-server (pid 4711)``: in the order they are stopped."""
    order = (CHILD, NATS, POSTGRES)
    return ", ".join(f"{f.name} (pid {f.proc.pid})" for f in sorted(found, key=lambda f: order.index(f.kind)))


def _stop_found(found: list[_Found]) -> list[_Found]:
    """Stop them in order (see :func:`_stop`); return those still running after all."""
    _stop(*([f.proc for f in found if f.kind == kind] for kind in (CHILD, NATS, POSTGRES)))
    return [f for f in found if _alive(f.proc)]


class Reaper:
    """``dai up``'s side of the reaper: start it, tell it every process, close the pipe at the end."""

    def __init__(self, data_dir: Path, lock_fd: int) -> None:
        self.data_dir = Path(data_dir).absolute()
        read_end, self._pipe = os.pipe()  # both non-inheritable: no other child gets the write end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "democratic_ai.ops.reaper", str(os.getpid()), str(self.data_dir), str(lock_fd)],
                stdin=read_end,
                pass_fds=(lock_fd,),
                start_new_session=True,  # a terminal's Ctrl-C or hang-up
            )  # must not stop the reaper
        finally:
            os.close(read_end)
        self._broken = False

    def watch(self, kind: str, pid: int, name: str) -> None:
        """Stop process ``pid`` (``child``, ``nats`` or ``postgres``; ``name`` for the log) if it
        outlives ``dai up``."""
        started = _started(pid)
        if started is not None:
            self._send(f"{kind} {pid} {started!r} {' '.join(name.split())}\n")

    def close(self, timeout: float = 60.0) -> None:
        """``dai up`` stops normally: the reaper only checks that nothing is left, then exits."""
        self._send("stopped\n")
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # it stops what is left on its own time; the data dir stays locked until then

    def _send(self, line: str) -> None:
        if self._pipe < 0 or self._broken:
            return
        try:
            os.write(self._pipe, line.encode())
        except BrokenPipeError:
            self._broken = True
            _say("dai: the reaper has exited; if dai up is killed now, its processes may outlive it")


def _read_watch_list(stream: Iterable[bytes]) -> tuple[list[_Found], bool]:
    """Read the pipe to its end: the processes to watch, and whether ``dai up`` stopped normally."""
    watched: dict[int, tuple[str, float, str]] = {}
    clean = False
    for raw in stream:
        parts = raw.decode(errors="replace").split()
        if parts == ["stopped"]:
            clean = True
        elif len(parts) >= 4 and parts[0] in (CHILD, NATS, POSTGRES):
            try:
                watched[int(parts[1])] = (parts[0], float(parts[2]), " ".join(parts[3:]))
            except ValueError:
                continue
    survivors = []
    for pid, (kind, started, name) in watched.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1.0 and _alive(proc):
                survivors.append(_Found(kind, name, proc))
        except psutil.Error:
            continue
    return survivors, clean


def main(argv: list[str]) -> int:
    """The reaper process: ``python -m democratic_ai.ops.reaper <dai up pid> <data dir> <lock fd>``."""
    parent, data_dir = argv[0], argv[1]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    survivors, clean = _read_watch_list(sys.stdin.buffer)
    if not survivors:
        return 0
    if clean:
        _say(f"dai: stopping what outlived dai up (pid {parent}): {_names(survivors)}")
    else:
        _say(f"dai: dai up (pid {parent}) on {data_dir} is gone; stopping what it started: {_names(survivors)}")
    still = _stop_found(survivors)
    if still:
        _say(f"dai: could not stop {_names(still)}; stop them by hand")
        return 1
    _say(f"dai: stopped the processes of dai up (pid {parent}); {data_dir} is free")
    return 0


def _leftovers(data_dir: Path) -> list[_Found]:
    """Processes of an earlier ``dai up`` on ``data_dir`` that are still running."""
    from .postgres_server import postmaster  # postgres_server imports asyncpg: only here

    found: list[_Found] = []
    store = str(data_dir / "nats")
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "nats-server" and "-sd" in cmdline and cmdline[cmdline.index("-sd") + 1] == store:
                found.append(_Found(NATS, "nats-server", proc))
            elif "democratic_ai.ops.cli" in cmdline and proc.environ().get(DATA_DIR_ENV) == str(data_dir):
                name = " ".join(cmdline[cmdline.index("democratic_ai.ops.cli") + 1 :][:3])
                found.append(_Found(CHILD, name, proc))
        except (psutil.Error, IndexError):
            continue
    pg = postmaster(data_dir / "pg")
    if pg is not None:
        found.append(_Found(POSTGRES, "postgres", pg))
    return [f for f in found if _alive(f.proc)]


def stop_leftovers(data_dir: Path, say: Callable[[str], None]) -> list[str]:
    """Stop what an earlier ``dai up`` on ``data_dir`` left running; call it holding the lock.

    Returns the processes it could not stop (``name (pid N)``), for the caller to refuse to start."""
    found = _leftovers(Path(data_dir).absolute())
    if not found:
        return []
    say(f"dai: an earlier dai up on {data_dir} left processes running; stopping them: {_names(found)}")
    return [f"{f.name} (pid {f.proc.pid})" for f in _stop_found(found)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
