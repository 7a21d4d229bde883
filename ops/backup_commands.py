"""``dai backup DIR`` and ``dai restore DIR``: open the connections, run :mod:`.backup`, rebuild.

A restore ends by rebuilding every read model from the restored log (``dai projections rebuild``
for each projection, in a shadow schema and swapped in): the read models of the database at hand
follow another log otherwise — their checkpoints are sequences of streams that were replaced —
and an operator who restores wants a platform that answers as before, not a list of chores. It
needs ``DATABASE_URL``, checked before anything is restored; ``--no-rebuild`` restores only the
log and prints the commands that rebuild (for a database restored or rebuilt elsewhere).

Exit codes: 0 done; 1 a server failed or refused (NATS unreachable, a snapshot or restore that did
not complete, a rebuild that failed) or ``NATS_URL``/``DATABASE_URL`` is not set (as for every dai
command); 2 a usage error, or a credential that is not the operator's; 3 the directory cannot be used (not a
backup, damaged, or ``dai backup`` into a directory that holds something); 4 a stream to restore
exists with data and ``--replace`` was not given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import nats.errors

from democratic_ai.contracts.bus import BusCredentialError, BusOptions, connect, role_of
from democratic_ai.projections import PROJECTIONS, ProjectionError, rebuild
from democratic_ai.schemas import create_pool, migrate

from .backup import (
    BackupError,
    BackupUnusable,
    Restored,
    StreamsHoldData,
    backup,
    read_backup,
    restore,
)
from .progress import Progress
from .snapshots import SnapshotError
from .status import OPERATOR_HINT

__all__ = ["add_commands", "run"]

EXIT_FAILED, EXIT_USAGE, EXIT_UNUSABLE, EXIT_HOLDS_DATA = 1, 2, 3, 4


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``backup`` and ``restore`` on the ``dai`` parser."""
    backup_parser = commands.add_parser(
        "backup",
        help="snapshot every stream and KV bucket into DIR, with a manifest of their states and checksums"
        " (needs NATS_URL and the operator's credential; the platform may keep running)",
    )
    backup_parser.add_argument("directory", type=Path, metavar="DIR", help="a new or empty directory")
    restore_parser = commands.add_parser(
        "restore",
        help="restore the streams of a backup exactly (sequences, times, headers, message ids), then rebuild"
        " every read model (needs NATS_URL, the operator's credential and DATABASE_URL)",
    )
    restore_parser.add_argument("directory", type=Path, metavar="DIR", help="a directory dai backup wrote")
    restore_parser.add_argument(
        "--replace",
        action="store_true",
        help="delete the streams of the backup that exist with data, and restore them (default: refuse)",
    )
    restore_parser.add_argument(
        "--no-rebuild",
        action="store_true",
        help="restore only the log; print the dai projections rebuild commands instead of running them",
    )


def _line(name: str, state: dict) -> str:
    return f"{name:<20} {state['messages']:>10,} messages  seq {state['first_seq']}..{state['last_seq']}"


def _replaced(stream: Restored) -> str:
    if not stream.replaced:
        return ""
    if not stream.consumers:
        return "  (replaced)"
    return f"  (replaced, dropping {stream.consumers} consumer{'s' if stream.consumers != 1 else ''})"


def _progress(label: str) -> Progress:
    return Progress(label, unit="bytes")


async def backup_command(bus: BusOptions, directory: Path) -> int:
    nc = await connect(bus, "dai-backup", connect_timeout=5, allow_reconnect=False, error_cb=_quiet)
    try:
        manifest = await backup(nc, directory, _progress)
    finally:
        await nc.close()
    for stream in manifest.streams:
        print(f"{_line(stream.name, stream.state)}  {stream.size:>12,} bytes  {stream.file}")
    print(f"backed up {len(manifest.streams)} streams into {directory}")
    return 0


async def restore_command(bus: BusOptions, database_url: str | None, directory: Path, *, replace: bool) -> int:
    """Restore ``directory``; then rebuild every read model in ``database_url`` (None: say how instead)."""
    manifest = read_backup(directory)  # every checksum before a connection: a bad backup changes nothing
    async with AsyncExitStack() as stack:
        nc = await connect(bus, "dai-restore", connect_timeout=5, allow_reconnect=False, error_cb=_quiet)
        stack.push_async_callback(nc.close)
        pool = None
        if database_url is not None:
            # Opened and migrated first: a database that cannot be rebuilt into is found before anything changes.
            pool = await create_pool(database_url, max_size=2)
            stack.push_async_callback(pool.close)
            async with pool.acquire() as conn:
                await migrate(conn)
        restored = await restore(nc, directory, manifest, _progress, replace=replace)
        for stream in restored:
            print(_line(stream.name, stream.state) + _replaced(stream))
        print(f"restored {len(restored)} streams from {directory} (backed up {manifest.created_at.isoformat()})")
        if any(stream.consumers for stream in restored):
            print(
                "platform processes were reading the replaced streams: restart them (with dai up: Ctrl-C, start"
                " it again), they hold the old log in memory"
            )
        if pool is None:
            print("rebuild the read models from the restored log:")
            for name in PROJECTIONS:
                print(f"  dai projections rebuild {name}")
            return 0
        for name, projection in PROJECTIONS.items():
            count = await rebuild(nc.jetstream(), pool, projection)
            print(f"rebuilt {name} from {count} events and swapped it in")
    return 0


async def _quiet(error: Exception) -> None:
    """The command reports what fails, in one line; nats-py's error callback adds nothing to it."""


def _operator(options: BusOptions) -> BusOptions:
    """Only the operator may snapshot, delete and restore streams: any other credential is refused
    here, before a restore has deleted a stream it then could not restore."""
    if role_of(options.credential) != "operator":
        raise BusCredentialError(f"dai backup and dai restore act as the operator; {OPERATOR_HINT}")
    return options


def run(args: argparse.Namespace, env: Callable[[str], str], bus: Callable[[], BusOptions]) -> int:
    """Run ``dai backup`` or ``dai restore``; an error is one line on stderr and its exit code."""
    try:
        if args.command == "backup":
            return asyncio.run(backup_command(_operator(bus()), args.directory))
        database_url = None if args.no_rebuild else env("DATABASE_URL")
        return asyncio.run(restore_command(_operator(bus()), database_url, args.directory, replace=args.replace))
    except BackupUnusable as exc:
        return _fail(exc, EXIT_UNUSABLE)
    except StreamsHoldData as exc:
        return _fail(exc, EXIT_HOLDS_DATA)
    except (BackupError, SnapshotError, ProjectionError) as exc:
        return _fail(exc, EXIT_FAILED)
    except BusCredentialError as exc:
        return _fail(exc, EXIT_USAGE)
    except nats.errors.NoServersError:
        return _fail(f"cannot reach NATS at {os.environ.get('NATS_URL')}", EXIT_FAILED)
    except OSError as exc:
        return _fail(f"cannot reach a server: {exc}", EXIT_FAILED)


def _fail(error: object, code: int) -> int:
    print(f"dai: {error}", file=sys.stderr)
    return code
