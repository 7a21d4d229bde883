"""Field types of the events: what every read model can hold, said once per rule.

PostgreSQL refuses a string holding NUL (``\\x00``) and an integer outside its column's type,
and a B-tree index refuses a key of more than about 2,700 bytes. An event the log takes but a
read model cannot store would stop its projection, and the log keeps it for ever. So the
limits are part of the event types: msgspec checks them whenever an event is decoded (by
every projection and in-memory follower), the gateway's request bodies use the same aliases
(so the edge answers 422 naming the field), and :func:`checked_encoder` checks them when a
command encodes an event, before anything is appended.

Strings from outside (NATS, HTTP) are valid UTF-8 once decoded, so NUL is the one code point
to refuse; a Python string with a lone surrogate cannot be encoded and is refused as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "BoundedId",
    "Count",
    "Description",
    "Email",
    "EventRejected",
    "Id",
    "Int64",
    "Name",
    "PositiveInt32",
    "TenantId",
    "Text",
    "checked_encoder",
    "rejection",
]

INT32_MAX = 2**31 - 1  # PostgreSQL ``integer``
INT64_MAX = 2**63 - 1  # PostgreSQL ``bigint``
_NO_NUL = r"^[^\x00]*$"

Id = Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)]
"""An identifier, hash, prefix, role or scope: at most 512 bytes, short enough for any index key."""
BoundedId = Annotated[str, msgspec.Meta(max_length=128)]
"""An :data:`Id` whose NUL check is left to PostgreSQL, for the streams whose decoding is hot
(USAGE: a pattern check costs msgspec about 0.6 µs a string, eight times the decoding itself);
the database refuses NUL and the projection quarantines the event."""
Name = Annotated[str, msgspec.Meta(max_length=200, pattern=_NO_NUL)]
"""A name people choose (a tenant's, an API key's)."""
Email = Annotated[str, msgspec.Meta(max_length=254, pattern=_NO_NUL)]
"""An e-mail address (RFC 5321's limit); its syntax is the identity service's rule."""
Text = Annotated[str, msgspec.Meta(max_length=2000, pattern=_NO_NUL)]
"""Free text: a reason, a description, a password hash, a user agent."""
Description = Annotated[str, msgspec.Meta(max_length=10_000, pattern=_NO_NUL)]
"""What a module says about itself or a capability."""
TenantId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]{1,64}$")]
"""A tenant id is a NATS subject token (``contracts/subjects.py``)."""
Int64 = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
PositiveInt32 = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]

_PATH = re.compile(r" - at `(?P<path>\$[^`]*)`$")


class EventRejected(ValueError):
    """An event breaks a rule of its type; ``path`` names the field (``$.rate_limit``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    @property
    def field(self) -> str:
        """The field's name without the ``$.`` of its JSON path (``rate_limit``, ``meta.ip``)."""
        return self.path.removeprefix("$").removeprefix(".") or "$"


def rejection(exc: msgspec.ValidationError) -> EventRejected:
    """The :class:`EventRejected` of a msgspec validation error, its JSON path split off."""
    text = str(exc)
    found = _PATH.search(text)
    path = found["path"] if found else "$"
    missing = re.search(r"missing required field `([^`]+)`", text)
    if missing:
        path = f"{path}.{missing[1]}"
    message = (text[: found.start()] if found else text).replace(f"matching regex {_NO_NUL!r}", "without NUL (\\u0000)")
    return EventRejected(message, path)


def checked_encoder(event_type: Any) -> Callable[[Any], bytes]:
    """An encoder of ``event_type`` (a struct or a tagged union) that first checks the field
    constraints, which msgspec checks only on decoding: it decodes what it encoded.

    Raises :class:`EventRejected` for an event that no reader would take.
    """
    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder(event_type).decode

    def encode_checked(event: Any) -> bytes:
        try:
            data = encode(event)
        except UnicodeEncodeError as exc:
            raise EventRejected(f"a string holds a code point that is not valid UTF-8: {exc.reason}", "$") from None
        try:
            decode(data)
        except msgspec.ValidationError as exc:
            raise rejection(exc) from None
        return data

    return encode_checked
