"""Billing periods: calendar months and years that begin at midnight in the tenant's time zone.

Time in the log is UTC; a period is the UTC instants between two local midnights, so a
Tokyo tenant's January is 2024-12-31T15:00Z – 2025-01-31T15:00Z. The months of a year are
counted from an *anchor* month: a yearly plan's year is the twelve calendar months from the
month it began in. Where a daylight-saving change falls on a midnight, ``zoneinfo`` picks one
instant, and both periods that meet there use the same one, so periods never overlap or gap.

Durations are exact ``Decimal`` seconds (to the microsecond), never ``timedelta.total_seconds``,
which is a float.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "InvalidPeriod",
    "InvalidTimeZone",
    "Month",
    "Period",
    "add_months",
    "month_of",
    "month_period",
    "parse_month",
    "seconds",
    "service_period",
    "zone",
]

Month = tuple[int, int]  # (year, month)
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


class InvalidTimeZone(ValueError):
    """Not an IANA time zone name this machine knows."""


class InvalidPeriod(ValueError):
    """Not a month written ``YYYY-MM``."""


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    months: int  # 1 for a month, 12 for a year

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTimeZone(f"{name!r} is not a known time zone; use an IANA name such as 'Asia/Tokyo'.") from None


def parse_month(text: str) -> Month:
    found = _MONTH.fullmatch(text)
    if not found:
        raise InvalidPeriod(f"{text!r} is not a month; write it as YYYY-MM, e.g. 2025-01.")
    return int(found[1]), int(found[2])


def add_months(month: Month, count: int) -> Month:
    index = month[0] * 12 + (month[1] - 1) + count
    return index // 12, index % 12 + 1


def _midnight(month: Month, time_zone: str) -> datetime:
    return datetime(month[0], month[1], 1, tzinfo=zone(time_zone)).astimezone(UTC)


def month_of(at: datetime, time_zone: str) -> Month:
    """The local calendar month ``at`` falls in."""
    local = at.astimezone(zone(time_zone))
    return local.year, local.month


def month_period(month: Month, time_zone: str) -> Period:
    return Period(_midnight(month, time_zone), _midnight(add_months(month, 1), time_zone), 1)


def service_period(at: datetime, interval: str, anchor: Month, time_zone: str) -> Period:
    """The period of ``interval`` ("month" or "year", counted from ``anchor``) that holds ``at``."""
    month = month_of(at, time_zone)
    if interval == "month":
        return month_period(month, time_zone)
    years = ((month[0] * 12 + month[1]) - (anchor[0] * 12 + anchor[1])) // 12
    first = add_months(anchor, 12 * years)
    return Period(_midnight(first, time_zone), _midnight(add_months(first, 12), time_zone), 12)


def seconds(span: timedelta) -> Decimal:
    """The exact length of ``span`` in seconds."""
    whole = Decimal(span.days * 86_400 + span.seconds)
    return whole + Decimal(span.microseconds).scaleb(-6) if span.microseconds else whole
