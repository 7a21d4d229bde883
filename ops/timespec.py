"""Instants on the command line: ISO 8601 or an age such as ``15m`` ("fifteen minutes ago").

Time in the log is UTC, so an ISO time without an offset is read as UTC, never as local time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["InvalidTime", "parse_time"]

_AGE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class InvalidTime(ValueError):
    """A time argument that is neither ISO 8601 nor an age."""


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2024-05-01``, ``2024-05-01T12:00:00Z``, ``2024-05-01T14:00+02:00``, or an age: ``90s``, ``15m``,
    ``2h``, ``7d``, ``1w``."""
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTime(
            f"{text!r} is not a time: use ISO 8601 (2024-05-01T12:00:00Z) or an age such as 15m, 2h or 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
