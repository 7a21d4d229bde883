"""The commands that read the log: ``dai replay`` and ``dai projections status|rebuild|verify|retry``.

Each opens its connections, runs one library call and prints the result; the work itself lives
in :mod:`.replay` and :mod:`democratic_ai.projections`. Exit codes: 0 success, 1 a verification
found differences or the command failed, 2 a usage error (unknown stream or projection, bad filter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import nats.errors
from nats.aio.client import Client as NATS

from democratic_ai.contracts.bus import BusCredentialError, BusOptions, connect
from democratic_ai.projections import (
    PROJECTIONS,
    Projection,
    ProjectionError,
    projection_status,
    rebuild,
    rebuild_as_of,
    retry,
    verify,
)
from democratic_ai.schemas import create_pool, migrate

from .progress import Progress
from .replay import ReplayError, ReplayOptions, plan_replay, replay
from .timespec import InvalidTime, parse_time

__all__ = [
    "UsageError",
    "rebuild_command",
    "replay_command",
    "retry_command",
    "run",
    "status_command",
    "verify_command",
]


class UsageError(ValueError):
    """A command line that names something that does not exist; exit code 2."""


def _projection(name: str) -> Projection:
    name = name.lower()  # as stream names, without regard to case
    if name not in PROJECTIONS:
        raise UsageError(f"unknown projection {name!r}; known: {', '.join(sorted(PROJECTIONS))}")
    return PROJECTIONS[name]


async def _quiet(error: Exception) -> None:
    """The command reports what fails, in one line; nats-py's error callback adds nothing to it."""


@asynccontextmanager
async def _nats(url: str, name: str) -> AsyncIterator[NATS]:
    # The credential comes from the environment, as for every dai command (contracts/bus.py).
    # One attempt and one retry (nats-py reads 0 as "retry for ever"), errors raised, not logged.
    nc = await connect(
        BusOptions.from_env(url),
        name,
        connect_timeout=5,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        error_cb=_quiet,
    )
    try:
        yield nc
    finally:
        await nc.close()


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool
    finally:
        await pool.close()


async def replay_command(nats_url: str, options: ReplayOptions, out_path: Path | None) -> int:
    """Write the events to ``out_path`` (stdout when ``None``) and say how many on stderr."""
    async with _nats(nats_url, "dai-replay") as nc:
        js = nc.jetstream()
        plan = await plan_replay(js, options)  # a bad filter must not truncate --out first
        options = plan.options  # with the stream's name as the server spells it
        progress = Progress(f"replay {options.stream}")
        if out_path is None:
            written = await replay(js, plan, sys.stdout.buffer, progress=progress)
            sys.stdout.buffer.flush()
        else:
            try:
                out: BinaryIO = out_path.open("wb")
            except OSError as exc:
                raise ReplayError(f"cannot write {str(out_path)!r}: {exc.strerror}") from None
            with out:
                written = await replay(js, plan, out, progress=progress)
    print(f"replayed {written} events from {options.stream}", file=sys.stderr)
    return 0


async def status_command(nats_url: str, database_url: str, as_json: bool = False) -> int:
    from dataclasses import asdict

    from .status import render_projections

    async with _nats(nats_url, "dai-projections-status") as nc, _database(database_url) as pool:
        rows = [asdict(row) for row in await projection_status(nc.jetstream(), pool, PROJECTIONS.values())]
    if as_json:
        print(json.dumps({"projections": rows}, indent=2))
    else:
        print("\n".join(render_projections(rows)))
    return 0


async def retry_command(database_url: str, name: str) -> int:
    """Apply NAME's quarantined events again; exit 0 when none is left, 1 when some still fail."""
    projection = _projection(name)
    async with _database(database_url) as pool:
        result = await retry(pool, projection)
    print(
        f"{name}: {result.applied} quarantined events applied, {result.failed} still failing"
        + (" (see projection_dead_letters.error)" if result.failed else "")
    )
    return 1 if result.failed else 0


async def rebuild_command(nats_url: str, database_url: str, name: str, as_of: datetime | None) -> int:
    projection = _projection(name)
    async with _nats(nats_url, "dai-projections-rebuild") as nc, _database(database_url) as pool:
        if as_of is None:
            count = await rebuild(nc.jetstream(), pool, projection)
            print(f"rebuilt {name} from {count} events and swapped it in")
            return 0
        result = await rebuild_as_of(nc.jetstream(), pool, projection, as_of)
    print(
        f"built {name} as of {result.as_of.isoformat()}: {result.events} events up to {projection.stream}"
        f" sequence {result.last_sequence}, in schema {result.schema}"
        f" (see {result.schema}.checkpoint); the live read model is unchanged"
    )
    return 0


async def verify_command(nats_url: str, database_url: str, name: str) -> int:
    """Exit 0 when every table equals its rebuild, 1 otherwise."""
    projection = _projection(name)
    async with _nats(nats_url, "dai-projections-verify") as nc, _database(database_url) as pool:
        comparisons = await verify(nc.jetstream(), pool, projection)
    for c in comparisons:
        verdict = "equal" if c.equal else "DIFFERENT"
        print(
            f"{c.table:<40} {verdict:<10} live {c.live.rows} rows md5 {c.live.md5}"
            f"  rebuilt {c.rebuilt.rows} rows md5 {c.rebuilt.md5}"
        )
    different = [c.table for c in comparisons if not c.equal]
    print(f"{name}: {'different: ' + ', '.join(different) if different else 'equal to a rebuild from the log'}")
    return 1 if different else 0


def run(args: argparse.Namespace, env: Callable[[str], str]) -> int:
    """Run ``dai replay`` or ``dai projections status|rebuild|verify``; errors are one line on stderr."""
    try:
        if args.command == "replay":
            options = ReplayOptions(
                stream=args.stream,
                tenant=args.tenant,
                capability=args.capability,
                subject=args.subject,
                since=parse_time(args.since) if args.since else None,
                from_seq=args.from_seq,
                until=parse_time(args.until) if args.until else None,
                to_seq=args.to_seq,
                format=args.format,
            )
            return _run(replay_command(env("NATS_URL"), options, args.out))
        if args.projection_command == "retry":
            return _run(retry_command(env("DATABASE_URL"), args.name))
        nats_url, database_url = env("NATS_URL"), env("DATABASE_URL")
        if args.projection_command == "status":
            return _run(status_command(nats_url, database_url, args.json))
        if args.projection_command == "rebuild":
            as_of = parse_time(args.as_of) if args.as_of else None
            return _run(rebuild_command(nats_url, database_url, args.name, as_of))
        return _run(verify_command(nats_url, database_url, args.name))
    except (ReplayError, InvalidTime, UsageError, BusCredentialError) as exc:
        print(f"dai: {exc}", file=sys.stderr)
        return 2
    except ProjectionError as exc:
        print(f"dai: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`dai replay … | head`): stop quietly, as other Unix tools do. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except nats.errors.NoServersError:
        print(f"dai: cannot reach NATS at {os.environ.get('NATS_URL')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dai: cannot reach a server: {exc}", file=sys.stderr)
        return 1


def _run(command: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(command)
    return uvloop.run(command)
