"""Dashboards: GET /v1/stats/timeseries, for the caller's tenant, or across a platform viewer's tenants.

A tenant's keys (and a service or platform key naming a tenant in X-Tenant-Id) read that tenant's
series; a platform_viewer key naming none reads every tenant of its list (all, for '*'), with totals
per tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from api.context import PRINCIPAL_KEY, context, principal
from api.keys import ALL_TENANTS
from api.routes_activity import parse_text, parse_time
from shared.errors import ValidationFailed
from shared.timeseries import BUCKETS_S, MAX_BUCKETS, timeseries

routes = web.RouteTableDef()
_DEFAULT_BUCKETS = {"1m": 60, "1h": 24}  # the last hour by minute, the last day by hour


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """The parameters of a time-series request, checked."""

    bucket: str
    since: datetime
    until: datetime
    sender: str | None


def series_query(q: Mapping[str, str], *, now: datetime | None = None) -> SeriesQuery:
    """`bucket` (1m or 1h, default 1h), `since`, `until` (default: the last 60 minutes or 24 hours up to now),
    `sender`; ValidationFailed names the bad one."""
    bucket = q.get("bucket", "1h")
    if bucket not in BUCKETS_S:
        raise ValidationFailed("bucket", f"must be one of {', '.join(BUCKETS_S)}")
    until = parse_time(q.get("until"), "until") or now or datetime.now(UTC)
    since = parse_time(q.get("since"), "since") or until - timedelta(
        seconds=BUCKETS_S[bucket] * _DEFAULT_BUCKETS[bucket])
    if since >= until:
        raise ValidationFailed("until", "must be after since")
    if (until - since).total_seconds() > BUCKETS_S[bucket] * MAX_BUCKETS:
        raise ValidationFailed("since", f"must be at most {MAX_BUCKETS} buckets of {bucket} before until")
    return SeriesQuery(bucket, since, until, parse_text(q.get("sender"), "sender"))


@routes.get("/v1/stats/timeseries")
async def get_timeseries(request: web.Request) -> web.Response:
    """Per bucket: enqueued, sent, failed, ambiguous, waiting (by state), p50/p95 enqueue→outcome latency."""
    caller = request.get(PRINCIPAL_KEY)
    cross_tenant = caller is not None and caller.tenant_id == ALL_TENANTS
    who = principal(request, "platform" if cross_tenant else "read")
    tenants = (list(who.tenants) if who.tenants is not None else None) if cross_tenant else [who.tenant_id]
    sq = series_query(request.query)
    ctx = context(request)
    return web.json_response(await ctx.blocking(lambda: timeseries(
        ctx.engine, tenants, bucket=sq.bucket, since=sq.since, until=sq.until, sender=sq.sender,
        per_tenant=cross_tenant)))
