"""Reading Server-Sent Events from an aiohttp response, for :meth:`HttpClient.stream`.

aiohttp's ``readline`` refuses lines longer than its buffer limit (128 KiB), and one chunk of a
stream — an upscaled image in base64 — can be far longer, so events are cut from the raw byte
stream here instead. Lines end in LF, as the gateway writes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

__all__ = ["read_events"]


async def read_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, bytes]]:
    """Yield ``(event, data)`` for each event; ``event`` is "message" when the server named none."""
    buffer = bytearray()
    async for piece in content.iter_any():
        # Search only the new bytes (and the one before them) for the blank line ending an event.
        start = max(len(buffer) - 1, 0)
        buffer += piece
        while (end := buffer.find(b"\n\n", start)) >= 0:
            parsed = _parse(bytes(buffer[:end]))
            del buffer[: end + 2]
            start = 0
            if parsed is not None:
                yield parsed


def _parse(block: bytes) -> tuple[str, bytes] | None:
    event = "message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # comments keep a connection alive; they carry nothing
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            event = value.decode()
        elif field == b"data":
            data.append(value)
    if not data:
        return None
    return event, b"\n".join(data)
