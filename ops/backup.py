"""Backups of the log: every stream of the account (the KV buckets are streams too) snapshotted
into a directory, checked and restored exactly — same sequences, times, headers, message ids and
gaps — with JetStream's own snapshot API (:mod:`.snapshots`).

A backup directory holds one ``<stream>.tar.s2`` per stream, the archive as the server sent it,
and ``manifest.json``, written last: the format and its version, the platform's and the NATS
server's versions, when it was made, and per stream its configuration, its state as of the
snapshot (messages, first and last sequence, deleted messages, …), the file's size and SHA-256.
A directory without a readable manifest is not a backup. Each stream is snapshotted at its own
instant: a backup is consistent per stream, which is what the projections need (each folds one
stream, and its checkpoint is a sequence of that stream).

Errors::

    BackupError
    ├── BackupUnusable      the directory cannot be used (exit 3)
    │   ├── NotABackup      no manifest, or one of another format
    │   ├── BackupDamaged   a file is missing, or its size or checksum is not the manifest's
    │   └── TargetNotEmpty  ``dai backup`` into a directory that holds something
    ├── CannotWrite         ``dai backup`` could not write a file (exit 1)
    ├── StreamsHoldData     a stream to restore exists with messages; --replace (exit 4)
    └── RestoreFailed       the server did not restore a stream as the manifest says (exit 1)

Every check of a restore runs before it changes anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from .progress import Progress
from .snapshots import JetStreamApiError, SnapshotError, api, restore_stream, snapshot_stream

__all__ = [
    "MANIFEST",
    "BackupDamaged",
    "BackupError",
    "BackupUnusable",
    "CannotWrite",
    "Manifest",
    "NotABackup",
    "RestoreFailed",
    "Restored",
    "StreamBackup",
    "StreamsHoldData",
    "TargetNotEmpty",
    "backup",
    "read_backup",
    "restore",
    "stream_names",
]

MANIFEST = "manifest.json"
FORMAT = "democratic-ai-backup"
FORMAT_VERSION = 1
_STREAM_NOT_FOUND = 10059  # JetStream's error code for an unknown stream
# What a restored stream must show as the manifest does: the projections' checkpoints are sequences.
# (An empty stream's first sequence is not compared: the server reports 0 or last + 1 for it.)
_COMPARED = ("messages", "last_seq", "num_deleted")

ProgressFor = Callable[[str], Progress]
"""A progress bar for a stream's transfer, given its label."""


class BackupError(Exception):
    """A backup or restore that cannot be made; the message says why, in one sentence."""


class BackupUnusable(BackupError):
    pass


class NotABackup(BackupUnusable):
    pass


class BackupDamaged(BackupUnusable):
    pass


class TargetNotEmpty(BackupUnusable):
    pass


class CannotWrite(BackupError):
    pass


class StreamsHoldData(BackupError):
    pass


class RestoreFailed(BackupError):
    pass


class StreamBackup(msgspec.Struct, frozen=True):
    """One stream of a backup; unknown fields are ignored, so a later dai may add some."""

    name: str
    file: str
    size: int
    sha256: str
    config: dict[str, Any]
    state: dict[str, Any]


class Manifest(msgspec.Struct, frozen=True):
    """``manifest.json``: ``config`` and ``state`` of each stream are the server's own JSON, as the
    snapshot answered them (a restore hands the configuration back as it came)."""

    format: str
    version: int
    platform_version: str
    nats_server_version: str
    created_at: datetime
    streams: list[StreamBackup]


@dataclass(frozen=True, slots=True)
class Restored:
    name: str
    state: dict[str, Any]
    replaced: bool  # an existing stream was deleted for it
    consumers: int = 0  # the consumers the deleted stream had: processes that read the old log


def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("democratic-ai")
    except PackageNotFoundError:
        return "unknown"


def _server_version(nc: NATS) -> str:
    version = nc.connected_server_version
    return f"{version.major}.{version.minor}.{version.patch}" + (f"-{version.prerelease}" if version.prerelease else "")


async def stream_names(nc: NATS) -> list[str]:
    """Every stream of the account, sorted (the API answers a page at a time)."""
    names: list[str] = []
    while True:
        page = await api(nc, "STREAM.NAMES", {"offset": len(names)})
        names += page.get("streams") or []
        if not page.get("streams") or len(names) >= page.get("total", 0):
            return sorted(names)


async def backup(nc: NATS, directory: Path, progress_for: ProgressFor) -> Manifest:
    """Snapshot every stream into ``directory`` (new, or empty), the manifest last.

    On failure the files written so far are removed: a directory is a backup only whole."""
    _prepare_target(directory)
    written: list[Path] = []
    try:
        streams = [await _snapshot(nc, directory, name, written, progress_for) for name in await stream_names(nc)]
        manifest = Manifest(
            format=FORMAT,
            version=FORMAT_VERSION,
            platform_version=_platform_version(),
            nats_server_version=_server_version(nc),
            created_at=datetime.now(UTC),
            streams=streams,
        )
        _write_manifest(directory, manifest, written)
    except OSError as exc:
        _remove(written)
        raise CannotWrite(f"cannot write the backup into {directory}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(written)
        raise
    return manifest


def _prepare_target(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise TargetNotEmpty(f"{directory} is not an empty directory: back up into a new one")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotWrite(f"cannot make the directory {directory}: {exc.strerror or exc}") from None


def _write_manifest(directory: Path, manifest: Manifest, written: list[Path]) -> None:
    """Written whole under another name and renamed: a directory with a manifest is a whole backup."""
    partial = directory / f".{MANIFEST}.partial"
    written.append(partial)
    with partial.open("wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    partial.rename(directory / MANIFEST)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def _snapshot(
    nc: NATS, directory: Path, name: str, written: list[Path], progress_for: ProgressFor
) -> StreamBackup:
    path = directory / f"{name}.tar.s2"
    written.append(path)
    digest = hashlib.sha256()
    progress = progress_for(f"backup {name}")

    def chunk(data: bytes) -> None:
        digest.update(data)
        progress.advance(len(data))

    with path.open("xb") as out:
        # The server's size of the stream: the archive is compressed, so the bar ends short of it.
        snapshot = await snapshot_stream(nc, name, out, chunk, on_start=lambda state: progress.start(state["bytes"]))
        out.flush()
        os.fsync(out.fileno())
    progress.finish()
    return StreamBackup(
        name=name,
        file=path.name,
        size=snapshot.size,
        sha256=digest.hexdigest(),
        config=snapshot.config,
        state=snapshot.state,
    )


def read_backup(directory: Path) -> Manifest:
    """The manifest of the backup in ``directory``, once every file is checked against it."""
    try:
        raw = (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise NotABackup(f"{directory} is not a backup: it has no {MANIFEST} (dai backup writes it last)") from None
    except OSError as exc:
        raise NotABackup(f"cannot read {directory / MANIFEST}: {exc.strerror}") from None
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        raise NotABackup(f"{directory / MANIFEST} is not the manifest of a backup: {exc}") from None
    except msgspec.DecodeError:
        raise NotABackup(f"{directory / MANIFEST} is not JSON: is it a backup?") from None
    if manifest.format != FORMAT:
        raise NotABackup(f"{directory / MANIFEST} is not the manifest of a dai backup (format {manifest.format!r})")
    if manifest.version != FORMAT_VERSION:
        raise NotABackup(
            f"{directory / MANIFEST} is of format version {manifest.version}; this dai reads version {FORMAT_VERSION}"
        )
    names = [stream.name for stream in manifest.streams]
    if len(set(names)) != len(names):
        raise NotABackup(f"{directory / MANIFEST} lists a stream twice: is it a backup?")
    for stream in manifest.streams:
        _check_file(directory, stream)
    return manifest


def _check_file(directory: Path, stream: StreamBackup) -> None:
    if stream.file != f"{stream.name}.tar.s2" or stream.config.get("name") != stream.name:
        raise NotABackup(f"{directory / MANIFEST} names stream {stream.name!r} inconsistently")
    path = directory / stream.file
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as fh:
            while block := fh.read(1024 * 1024):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        raise BackupDamaged(f"the backup is damaged: {path} is missing") from None
    except OSError as exc:
        raise BackupDamaged(f"the backup is damaged: cannot read {path}: {exc.strerror}") from None
    if size != stream.size or digest.hexdigest() != stream.sha256:
        raise BackupDamaged(
            f"the backup is damaged: {path} has {size:,} bytes of SHA-256 {digest.hexdigest()[:16]}…,"
            f" the manifest says {stream.size:,} bytes of {stream.sha256[:16]}…"
        )


async def _existing_state(nc: NATS, name: str) -> dict[str, Any] | None:
    try:
        return (await api(nc, f"STREAM.INFO.{name}"))["state"]
    except JetStreamApiError as exc:
        if exc.err_code == _STREAM_NOT_FOUND:
            return None
        raise


async def restore(
    nc: NATS, directory: Path, manifest: Manifest, progress_for: ProgressFor, *, replace: bool = False
) -> list[Restored]:
    """Restore every stream of ``manifest`` (read by :func:`read_backup`) from ``directory``.

    A stream of the same name that exists empty (a starting platform process creates its streams)
    is deleted first; one that holds data is deleted only when ``replace`` is given, and
    otherwise nothing is changed."""
    existing = {s.name: await _existing_state(nc, s.name) for s in manifest.streams}
    # A stream that was ever written to, even if purged since: its sequences would be lost too.
    held = {name: state for name, state in existing.items() if state and (state["messages"] or state["last_seq"])}
    if held and not replace:
        listed = ", ".join(f"{name} ({state['messages']:,} messages)" for name, state in held.items())
        raise StreamsHoldData(
            f"these streams exist with data: {listed}; nothing was restored. Restore over them with"
            " --replace (their messages are deleted), or into a server without them"
        )
    restored: list[Restored] = []
    for stream in manifest.streams:
        try:
            restored.append(await _restore_one(nc, directory, stream, existing[stream.name], progress_for))
        except BackupError as exc:
            done = ", ".join(r.name for r in restored) or "none"
            raise RestoreFailed(f"{exc} (restored before it: {done}; run the restore again with --replace)") from None
    return restored


async def _restore_one(
    nc: NATS, directory: Path, stream: StreamBackup, existing: dict[str, Any] | None, progress_for: ProgressFor
) -> Restored:
    progress = progress_for(f"restore {stream.name}")
    progress.start(stream.size)
    try:
        if existing is not None:
            await api(nc, f"STREAM.DELETE.{stream.name}")
        with (directory / stream.file).open("rb") as source:
            info = await restore_stream(nc, stream.config, stream.state, source, progress.advance)
    except SnapshotError as exc:
        raise RestoreFailed(f"the server did not restore {stream.name}: {exc}") from None
    progress.finish()
    state = info["state"]
    compared = (*_COMPARED, "first_seq") if stream.state.get("messages") else _COMPARED
    differs = [
        f"{key} {state.get(key)} (backup: {stream.state.get(key)})"
        for key in compared
        if state.get(key) != stream.state.get(key)
    ]
    if differs:
        raise RestoreFailed(f"{stream.name} was restored with another state: {', '.join(differs)}")
    return Restored(stream.name, state, existing is not None, existing.get("consumer_count", 0) if existing else 0)
