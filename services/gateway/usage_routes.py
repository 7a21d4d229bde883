"""Usage over HTTP: ``GET /v1/usage`` (series from the read models) and ``GET /v1/usage/limits``
(each limit's state now, from the gateway's memory).

Series come from ``usage_daily`` when a day or month granularity needs nothing finer, and from
``usage_hourly`` for hours or a ``capability`` / ``module`` filter; ``from`` and ``to`` are
rounded outwards to whole periods (UTC), so every figure is exact.

Usage is billing data: reading it needs ``billing:read`` (tenant admins; super admins for any
tenant with ``?tenant=``). The limits a caller is subject to are also shown to anyone who may
call capabilities (``module:use``). Reads run in a transaction scoped to the tenant with
``SET LOCAL``, so Row Level Security confines them to it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal, cast

import msgspec
from aiohttp import web

from democratic_ai.contracts import subjects
from democratic_ai.contracts.usage_events import Metric, is_billable
from democratic_ai.schemas import tenant_transaction
from democratic_ai.services.identity import Principal

from .auth import queried_tenant, require
from .bodies import from_row, respond
from .errors import bad_parameter
from .openapi import Query, operation
from .state import METERING, POOL

__all__ = ["add_usage_routes"]

_METRICS = frozenset(m.value for m in Metric)
# granularity → (longest range it may cover, the default range)
_RANGES = {
    "hour": (timedelta(days=31), timedelta(days=1)),
    "day": (timedelta(days=366), timedelta(days=30)),
    "month": (timedelta(days=3660), timedelta(days=365)),
}


Granularity = Literal["hour", "day", "month"]


class UsagePoint(msgspec.Struct):
    period: datetime  # the hour, day or month it starts (UTC)
    metric: str
    outcome: str
    value: int
    events: int


class UsageSeries(msgspec.Struct):
    tenant_id: str
    from_: datetime = msgspec.field(name="from")  # rounded outwards to whole periods
    to: datetime
    granularity: Granularity
    metric: str | None
    capability: str | None
    module: str | None
    usage: list[UsagePoint]
    totals: dict[str, dict[str, int]]  # metric → outcome → value
    # metric → what of it is billed (contracts.usage_events.BILLABLE): the success of every
    # metric, and the compute_ms of cancelled calls
    billable: dict[str, int]


class LimitState(msgspec.Struct):
    name: str  # calls, key-calls, compute, bandwidth, storage
    algorithm: str
    metric: str
    unit: str
    quota: int
    window_seconds: int
    used: int
    remaining: int
    reset_seconds: float


class Limits(msgspec.Struct):
    tenant_id: str
    plan: str
    api_key_id: str | None
    limits: list[LimitState]


_TENANT = Query("tenant", "The tenant (super admins only; anyone else gets their own).")
_USAGE_QUERY = (
    _TENANT,
    Query("granularity", "hour, day (default) or month.", {"type": "string", "enum": ["hour", "day", "month"]}),
    Query("from", "ISO 8601 date or date-time with a time zone (default: one default range before 'to')."),
    Query("to", "ISO 8601 date or date-time with a time zone (default: now)."),
    Query("metric", f"Only this metric: {', '.join(sorted(m.value for m in Metric))}."),
    Query("capability", "Only calls of this capability."),
    Query("module", "Only calls served by this module."),
)


# Instants a series may start or end at: far enough inside datetime's years 1-9999 that
# rounding to a month and subtracting a default range cannot overflow.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _instant(parameter: str, raw: str) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time with a time zone, from 1970 to 9000."""
    try:
        if len(raw) == 10:
            value = datetime.combine(date.fromisoformat(raw), datetime.min.time(), UTC)
        else:
            value = datetime.fromisoformat(raw)
            if value.tzinfo is None:
                raise bad_parameter(parameter, f"{parameter!r} needs a time zone, e.g. 2025-06-01T12:00:00Z", raw)
            value = value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad_parameter(
            parameter,
            f"{parameter!r} must be an ISO 8601 date or date-time, e.g. 2025-06-01 or 2025-06-01T12:00:00Z",
            raw,
        ) from None
    if not _EARLIEST <= value < _LATEST:
        raise bad_parameter(parameter, f"{parameter!r} must lie between 1970 and 9000", raw)
    return value


def _floor(value: datetime, granularity: str) -> datetime:
    value = value.replace(minute=0, second=0, microsecond=0)
    if granularity in ("day", "month"):
        value = value.replace(hour=0)
    if granularity == "month":
        value = value.replace(day=1)
    return value


def _ceil(value: datetime, granularity: str) -> datetime:
    floored = _floor(value, granularity)
    if floored == value:
        return value
    if granularity == "hour":
        return floored + timedelta(hours=1)
    if granularity == "day":
        return floored + timedelta(days=1)
    return (floored + timedelta(days=32)).replace(day=1)


@operation(
    "The tenant's usage as a series (and totals) from the usage read models.",
    {200: UsageSeries},
    query=_USAGE_QUERY,
    description="Every event of a call carries the call's one outcome: success, cancelled (by the caller),"
    " timeout, failed or rate_limited. 'billable' sums, per metric, what is billed: every metric"
    " of a success, and the compute_ms of a cancelled call; nothing of the others.",
)
async def get_usage(request: web.Request) -> web.Response:
    principal = require(request, "billing:read")
    tenant = queried_tenant(request, principal)
    query = request.query
    granularity = query.get("granularity", "day")
    if granularity not in _RANGES:
        raise bad_parameter("granularity", "'granularity' must be hour, day or month", granularity)
    longest, default = _RANGES[granularity]
    metric = query.get("metric") or None
    if metric is not None and metric not in _METRICS:
        raise bad_parameter("metric", f"'metric' must be one of {', '.join(sorted(_METRICS))}", metric)
    capability = query.get("capability") or None
    if capability is not None:
        try:
            subjects.validate_capability(capability)
        except subjects.InvalidSubjectToken as exc:
            raise bad_parameter("capability", str(exc), capability) from None
    module = query.get("module") or None
    if module is not None:
        try:
            subjects.validate_token(module, "module")
        except subjects.InvalidSubjectToken as exc:
            raise bad_parameter("module", str(exc), module) from None
    end = _instant("to", query["to"]) if "to" in query else datetime.now(UTC)
    start = _instant("from", query["from"]) if "from" in query else end - default
    if start >= end:
        raise bad_parameter("from", "'from' must be earlier than 'to'")
    start, end = _floor(start, granularity), _ceil(end, granularity)
    if end - start > longest:
        raise bad_parameter(
            "from", f"a {granularity}ly series covers at most {longest.days} days; narrow 'from' and 'to'"
        )

    filters, args = [], [granularity]
    if metric is not None:
        args.append(metric)
        filters.append(f"metric = ${len(args)}")
    if capability is not None or module is not None or granularity == "hour":
        for column, value in (("capability", capability), ("module_id", module)):
            if value is not None:
                args.append(value)
                filters.append(f"{column} = ${len(args)}")
        args += [start, end]
        sql = (
            "SELECT date_trunc($1, hour, 'UTC') AS period, metric, outcome, sum(value)::bigint AS value,"
            " sum(events)::bigint AS events FROM usage_hourly"
            f" WHERE hour >= ${len(args) - 1} AND hour < ${len(args)}"
        )
    else:
        args += [start.date(), end.date()]
        sql = (
            "SELECT date_trunc($1, day::timestamp) AT TIME ZONE 'UTC' AS period, metric, outcome,"
            " sum(value)::bigint AS value, sum(events)::bigint AS events FROM usage_daily"
            f" WHERE day >= ${len(args) - 1} AND day < ${len(args)}"
        )
    sql += "".join(f" AND {f}" for f in filters) + " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    async with tenant_transaction(request.app[POOL], tenant) as conn:
        rows = await conn.fetch(sql, *args)

    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        by_outcome = totals.setdefault(row["metric"], {})
        by_outcome[row["outcome"]] = by_outcome.get(row["outcome"], 0) + row["value"]
    billable = {
        metric: sum(value for outcome, value in by_outcome.items() if is_billable(metric, outcome))
        for metric, by_outcome in totals.items()
    }
    return respond(
        UsageSeries(
            tenant,
            start,
            end,
            cast(Granularity, granularity),
            metric,
            capability,
            module,
            [from_row(UsagePoint, row) for row in rows],
            totals,
            billable,
        )
    )


@operation("Every limit the caller is subject to, as it stands now.", {200: Limits}, query=(_TENANT,))
async def get_limits(request: web.Request) -> web.Response:
    principal = require(request, "billing:read", "module:use")
    tenant = queried_tenant(request, principal)
    if tenant != principal.tenant_id:  # a super admin looking at another tenant: its plan only
        principal = Principal(tenant_id=tenant, role="", permissions=frozenset())
    metering = request.app[METERING]
    return respond(
        Limits(
            tenant,
            metering.plans.plan_of(tenant).name,
            principal.key_id or None,
            [
                LimitState(
                    s.name, s.algorithm, s.metric, s.unit, s.quota, s.window, s.used, s.remaining, round(s.reset, 3)
                )
                for s in metering.policies(principal, storage=True)
            ],
        )
    )


def add_usage_routes(app: web.Application) -> None:
    app.router.add_get("/v1/usage", get_usage)
    app.router.add_get("/v1/usage/limits", get_limits)
