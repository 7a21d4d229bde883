"""One ``dai up`` per data dir: the lock ``<data-dir>/dai.lock`` and the ``<data-dir>/env`` it publishes.

``dai up`` takes an exclusive ``flock`` on ``dai.lock`` before it starts anything and writes its
pid and start time into it, so a second ``dai up`` on the same data dir can say who holds it. The
kernel drops the lock when the last descriptor of it closes, so a crash or ``kill -9`` can never
leave a stale lock behind. ``dai up`` hands a duplicate of the descriptor to its reaper
(:mod:`.reaper`): the lock stays held until the reaper has stopped every process of the platform,
so the next ``dai up`` cannot start on a store the previous one's servers still use.

Once the platform is ready, ``dai up`` writes ``env``: the ``export`` lines that point a ``dai``
command at it (``NATS_URL``, ``DATABASE_URL``, the operator's credential, the key-encryption key).
``dai env`` prints them again, and only while the lock is held by a live ``dai up``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

__all__ = ["DataDirIdle", "DataDirInUse", "DataDirLock", "Holder", "export_lines", "holder", "read_env", "write_env"]

LOCK_NAME = "dai.lock"
ENV_NAME = "env"


@dataclass(frozen=True, slots=True)
class Holder:
    """The ``dai up`` that holds a data dir's lock, as it wrote itself into the lock file."""

    pid: int | None
    started: str | None  # ISO 8601, UTC

    @property
    def alive(self) -> bool:
        """Whether that ``dai up`` still runs (a zombie, killed but not yet waited for, does not)."""
        if self.pid is None:
            return False
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def describe(self) -> str:
        """``pid 4711, started 2026-12-02 00:55:03 UTC`` (whatever of it is known)."""
        parts = [f"pid {self.pid}" if self.pid is not None else "pid unknown"]
        if self.started:
            try:
                at = datetime.fromisoformat(self.started).astimezone(UTC)
                parts.append(f"started {at:%Y-%m-%d %H:%M:%S} UTC")
            except ValueError:
                parts.append(f"started {self.started}")
        return ", ".join(parts)


class DataDirInUse(Exception):
    """Another ``dai up`` holds the data dir."""

    def __init__(self, data_dir: Path, holder: Holder) -> None:
        self.data_dir, self.holder = data_dir, holder
        super().__init__(f"{data_dir} is in use by dai up ({holder.describe()}); stop it first or use --data-dir")


class DataDirIdle(Exception):
    """No ``dai up`` runs on the data dir (or it is not ready yet)."""


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    pid = data.get("pid") if isinstance(data, dict) else None
    started = data.get("started") if isinstance(data, dict) else None
    return Holder(pid if isinstance(pid, int) else None, started if isinstance(started, str) else None)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class DataDirLock:
    """The exclusive lock of a data dir, held from :meth:`acquire` until :meth:`release` (or exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        """The lock's descriptor (to hand to a process that must keep the lock while it runs)."""
        if self._fd is None:
            raise RuntimeError("the data dir lock is not held")
        return self._fd

    def acquire(self, wait_for_dead_holder: float = 30.0, on_wait: Callable[[Holder], None] | None = None) -> None:
        """Take the lock or raise :class:`DataDirInUse` naming the holder.

        A holder whose ``dai up`` is gone but whose reaper is still stopping its processes keeps
        the lock for a few seconds more; then this waits (up to ``wait_for_dead_holder`` seconds,
        calling ``on_wait(holder)`` once) rather than refusing.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline, told = time.monotonic() + wait_for_dead_holder, False
            while not _try_lock(fd):
                current = self._holder_settled(fd)
                if current.alive or time.monotonic() > deadline:
                    raise DataDirInUse(self.data_dir, current)
                if not told and on_wait is not None:
                    on_wait(current)
                    told = True
                time.sleep(0.1)
            os.ftruncate(fd, 0)
            record = {"pid": os.getpid(), "started": datetime.now(UTC).isoformat(timespec="seconds")}
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _holder_settled(fd: int) -> Holder:
        # The holder writes its record right after it takes the lock: give it that instant.
        for _ in range(10):
            current = _read_holder(fd)
            if current.pid is not None:
                return current
            time.sleep(0.05)
        return current

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a starting ``dai up``)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            (self.data_dir / ENV_NAME).unlink(missing_ok=True)
            os.close(fd)


def holder(data_dir: Path) -> Holder | None:
    """The live ``dai up`` holding ``data_dir``'s lock, or ``None`` when nothing runs there."""
    path = Path(data_dir).absolute() / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock_shared(fd):
            return None
        current = DataDirLock._holder_settled(fd)  # noqa: SLF001 - the lock's own reading of its holder
        return current if current.alive else None
    finally:
        os.close(fd)


def _try_lock_shared(fd: int) -> bool:
    """Whether nobody holds the lock (a shared lock, released at once, proves it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def export_lines(env: Mapping[str, str]) -> list[str]:
    """``export NAME=value`` lines, each value quoted for a POSIX shell."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def write_env(data_dir: Path, env: Mapping[str, str]) -> Path:
    """Publish the running platform's ``export`` lines in ``<data-dir>/env`` (atomically, 0600)."""
    path = Path(data_dir).absolute() / ENV_NAME
    tmp = path.with_name(f".{ENV_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(export_lines(env)) + "\n")
    os.replace(tmp, path)
    return path


def read_env(data_dir: Path) -> str:
    """The ``export`` lines of the ``dai up`` running on ``data_dir``; :class:`DataDirIdle` if none runs."""
    data_dir = Path(data_dir).absolute()
    current = holder(data_dir)
    if current is None:
        raise DataDirIdle(
            f"no dai up runs on {data_dir}; start one with: dai up --data-dir {shlex.quote(str(data_dir))}"
        )
    try:
        return (data_dir / ENV_NAME).read_text()
    except FileNotFoundError:
        raise DataDirIdle(
            f"the dai up on {data_dir} ({current.describe()}) is still starting; try again once it says it is up"
        ) from None
