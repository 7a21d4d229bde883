"""JetStream's own stream snapshot and restore, spoken over plain NATS (nats-py has no wrapper).

A snapshot is the server's copy of a stream's store — every message with its sequence, time,
headers and message id, and the gaps of deleted messages — as one ``tar.s2`` archive, which
the server streams in chunks; a restore hands the same bytes back and the server rebuilds the
stream from them, sequences and all. The protocol (nats-server ``server/jetstream_api.go``):

Snapshot
    ``$JS.API.STREAM.SNAPSHOT.<stream>`` with ``{"deliver_subject", "no_consumers",
    "chunk_size", "window_size", "jsck"}`` answers the stream's configuration and its state as
    of the snapshot; then the chunks arrive on the deliver subject, each full one with a reply
    subject that must be answered (the flow control: the server keeps at most ``window_size``
    unacknowledged, and gives up after 5 s without an acknowledgement); that subject ends with the
    chunk's size and its index, counted from 1. The last, partial chunk has no reply subject;
    the end is an empty message, with a ``204`` status or none, and a failure is a ``408`` or
    ``500`` status with a description.
Restore
    ``$JS.API.STREAM.RESTORE.<stream>`` with ``{"config", "state"}`` answers the subject to
    send the chunks to (the stream's name must be free). Each chunk is a request, answered
    empty, or with an error; an empty message ends the transfer and is answered, once the
    server has rebuilt the stream, with its stream info or the error. The server drops a
    restore that sees no chunk for 5 s.

Both run in bounded memory: a snapshot is written chunk by chunk, acknowledging each only once
it is on disk; a restore reads one chunk at a time.

Errors::

    SnapshotError          the transfer did not complete (a timeout, a stall, a lost chunk)
    └── JetStreamApiError  the API answered an error (a stream that does not exist, or does)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

__all__ = [
    "RESTORE_CHUNK",
    "JetStreamApiError",
    "SnapshotError",
    "StreamSnapshot",
    "api",
    "restore_stream",
    "snapshot_stream",
]

_API = "$JS.API"
# The server clamps the chunk to 1 KiB..1 MiB and the window to 1 KiB..32 MiB; with these a
# snapshot holds at most 4 MiB in flight (the subscription's pending buffer) at a time.
SNAPSHOT_CHUNK = 256 * 1024
SNAPSHOT_WINDOW = 4 * 1024 * 1024
RESTORE_CHUNK = 256 * 1024  # well under the server's max_payload (8 MiB in nats.conf)
API_TIMEOUT = 10.0
# A snapshot's answer comes after the server has checked every message (jsck), and a restore's
# last answer after it has rebuilt the stream: both take as long as the stream is large.
LONG_TIMEOUT = 600.0
CHUNK_TIMEOUT = 30.0  # the server itself gives up after 5 s without a chunk or an acknowledgement


class SnapshotError(Exception):
    """A snapshot or restore that did not complete."""


class JetStreamApiError(SnapshotError):
    """The JetStream API answered an error: ``code`` is the HTTP-like status, ``err_code`` JetStream's own."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} ({subject}: {code}, error {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What the server said of a stream it snapshotted, and how many bytes the archive has."""

    config: dict[str, Any]
    state: dict[str, Any]
    size: int


async def api(nc: NATS, subject: str, body: dict[str, Any] | None = None, timeout: float = API_TIMEOUT) -> dict:
    """One request of the JetStream API (``subject`` after ``$JS.API.``); its answer, or the error raised."""
    full = f"{_API}.{subject}"
    try:
        message = await nc.request(full, json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    except NatsTimeout:
        raise SnapshotError(f"the JetStream API did not answer {full} within {timeout:g} s") from None
    except NoRespondersError:
        raise SnapshotError(f"nothing answers {full}: is JetStream enabled on this server?") from None
    return _answer(full, message.data)


def _answer(subject: str, data: bytes) -> dict:
    try:
        answer = json.loads(data)
    except ValueError:
        raise SnapshotError(f"{subject} answered something that is not JSON: {data[:200]!r}") from None
    error = answer.get("error")
    if error:
        raise JetStreamApiError(
            subject, int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description", error))
        )
    return answer


async def snapshot_stream(
    nc: NATS, stream: str, out: BinaryIO, on_chunk: Callable[[bytes], None], *, on_start: Callable[[dict], None]
) -> StreamSnapshot:
    """Write the snapshot of ``stream`` to ``out``; ``on_start`` gets the stream's state before
    the first chunk, ``on_chunk`` every chunk once it is written (a checksum, a progress bar).

    Consumers are left out: every platform process makes its own and keeps its position
    elsewhere (the projections in PostgreSQL), and a restored consumer would point at a process
    that is gone."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox, pending_bytes_limit=4 * SNAPSHOT_WINDOW)
    try:
        answer = await api(
            nc,
            f"STREAM.SNAPSHOT.{stream}",
            {
                "deliver_subject": inbox,
                "no_consumers": True,
                "chunk_size": SNAPSHOT_CHUNK,
                "window_size": SNAPSHOT_WINDOW,
                "jsck": True,  # the server checks every message's checksum first: no backup of a torn store
            },
            timeout=LONG_TIMEOUT,
        )
        on_start(answer["state"])
        size = chunks = 0
        while True:
            try:
                message = await subscription.next_msg(timeout=CHUNK_TIMEOUT)
            except NatsTimeout:
                raise SnapshotError(
                    f"the snapshot of {stream} stalled: no chunk for {CHUNK_TIMEOUT:g} s after {size:,} bytes"
                ) from None
            status = (message.headers or {}).get("Status")
            if status is not None and status != "204":
                description = (message.headers or {}).get("Description", "")
                raise SnapshotError(f"the server stopped the snapshot of {stream}: {status} {description}".rstrip())
            if not message.data:
                break  # the end: an empty message, with a 204 status or none
            chunks += 1
            if message.reply and not message.reply.endswith(f".{len(message.data)}.{chunks}"):
                # The reply subject ends <size>.<index>: a chunk lost on the way (a slow consumer's
                # dropped message) would otherwise leave a hole in the archive that nothing notices.
                raise SnapshotError(f"the snapshot of {stream} lost a chunk: chunk {chunks} came as {message.reply}")
            out.write(message.data)
            size += len(message.data)
            on_chunk(message.data)
            if message.reply:
                await nc.publish(message.reply, b"")  # written: the server may send one chunk more
    finally:
        await subscription.unsubscribe()
    return StreamSnapshot(config=answer["config"], state=answer["state"], size=size)


async def restore_stream(
    nc: NATS, config: dict[str, Any], state: dict[str, Any], source: BinaryIO, on_chunk: Callable[[int], None]
) -> dict:
    """Create the stream ``config`` names from the snapshot read from ``source``; its stream info.

    The name must be free (the server refuses a restore over an existing stream)."""
    name = config["name"]
    answer = await api(nc, f"STREAM.RESTORE.{name}", {"config": config, "state": state})
    deliver = answer["deliver_subject"]
    while chunk := source.read(RESTORE_CHUNK):
        try:
            reply = await nc.request(deliver, chunk, timeout=CHUNK_TIMEOUT)
        except NatsTimeout:
            raise SnapshotError(
                f"the server did not take a chunk of {name}'s snapshot within {CHUNK_TIMEOUT:g} s"
            ) from None
        except NoRespondersError:
            raise SnapshotError(f"the server dropped the restore of {name} (its log says why)") from None
        if reply.data:
            _answer(deliver, reply.data)  # an error (the only thing a chunk's answer carries)
        on_chunk(len(chunk))
    try:
        done = await nc.request(deliver, b"", timeout=LONG_TIMEOUT)
    except NatsTimeout:
        raise SnapshotError(f"the server did not finish restoring {name} within {LONG_TIMEOUT:g} s") from None
    return _answer(deliver, done.data)  # a stream info: config, created, state
