"""Routes of the activity view: GET /v1/activity, /v1/notifications/{id}, /v1/stats, and resends
(POST /v1/notifications/{id}:retry, POST /v1/notifications:retry)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from aiohttp import web

from api.context import context, principal
from api.errors import not_found
from api.routes_provider import read_object
from shared.activity import ActivityFilter, list_activity, notification_detail, stats
from shared.clock import as_utc
from shared.errors import ValidationFailed
from shared.events import recent_events
from shared.message import check_line
from shared.models import State
from shared.resend import MAX_BULK, RESENDABLE, ResendFilter, current_state, matching, resend

routes = web.RouteTableDef()
_MAX_LIMIT = 200
_MAX_WINDOW_S = 90 * 86400
_MAX_FILTER_CHARS = 320
_ID = re.compile(r"[0-9a-f]{32}")  # shared.ids.new_id; anything else is no notification


@routes.get("/v1/activity")
async def get_activity(request: web.Request) -> web.Response:
    """The tenant's notifications, newest first, filtered, one page per call (`next_cursor`)."""
    who = principal(request)
    q = request.query
    filters = activity_filter(q)
    limit = _int(q.get("limit"), "limit", 50, 1, _MAX_LIMIT)
    ctx = context(request)
    page = await ctx.blocking(lambda: list_activity(ctx.engine, who.tenant_id, filters,
                                                    cursor=q.get("cursor") or None, limit=limit))
    return web.json_response(page)


@routes.get("/v1/notifications/{id}")
async def get_notification(request: web.Request) -> web.Response:
    """One notification of the caller's tenant with every delivery attempt; 404 for any other."""
    who = principal(request)
    ctx = context(request)
    nid = request.match_info["id"]
    item = await ctx.blocking(notification_detail, ctx.engine, who.tenant_id, nid) if _ID.fullmatch(nid) else None
    if item is None:
        raise not_found("notification")
    return web.json_response(item)


@routes.get("/v1/events")
async def get_events(request: web.Request) -> web.Response:
    """Config changes, credential check failures and test sends, newest first."""
    who = principal(request)
    limit = _int(request.query.get("limit"), "limit", 50, 1, _MAX_LIMIT)
    ctx = context(request)
    return web.json_response({"items": await ctx.blocking(lambda: recent_events(ctx.engine, who.tenant_id,
                                                                                limit=limit))})


@routes.get("/v1/stats")
async def get_stats(request: web.Request) -> web.Response:
    """Counts by status and by error code over the last `window_s` seconds (default 24 h)."""
    who = principal(request)
    window_s = _int(request.query.get("window_s"), "window_s", 86400, 1, _MAX_WINDOW_S)
    ctx = context(request)
    return web.json_response(await ctx.blocking(lambda: stats(ctx.engine, who.tenant_id, window_s=window_s)))


def activity_filter(q: Mapping[str, str]) -> ActivityFilter:
    """The filters of an activity query (API and page); ValidationFailed names the bad one."""
    status = q.get("status")
    if status is not None and status not in {s.value for s in State}:
        raise ValidationFailed("status", f"must be one of {', '.join(s.value for s in State)}")
    return ActivityFilter(status=status, error_code=parse_text(q.get("error_code"), "error_code"),
                          recipient=parse_text(q.get("recipient"), "recipient"),
                          since=parse_time(q.get("since"), "since"), until=parse_time(q.get("until"), "until"),
                          possible_duplicate=_flag(q.get("possible_duplicate"), "possible_duplicate"))


def _flag(raw: str | None, name: str) -> bool | None:
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ValidationFailed(name, "must be true or false")
    return raw == "true"


def parse_text(raw: str | None, name: str) -> str | None:
    """A one-line query text (None when absent or empty); ValidationFailed naming `name` otherwise."""
    # No control characters: PostgreSQL cannot even compare a text holding NUL.
    return check_line(raw, name, _MAX_FILTER_CHARS) or None


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(name, "must be an integer") from None
    if not low <= value <= high:
        raise ValidationFailed(name, f"must be between {low} and {high}")
    return value


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An ISO 8601 query time in UTC (None when absent); ValidationFailed naming `name` otherwise."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(name, "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return as_utc(value)


_RETRY_FIELDS = frozenset({"state", "error_code", "since", "until", "limit"})


@routes.post("/v1/notifications/{id}:retry")
async def post_retry(request: web.Request) -> web.Response:
    """Resend one failed or ambiguous notification (admin); a no-op answering the current state otherwise."""
    who = principal(request, "admin")
    ctx = context(request)
    nid = request.match_info["id"]
    if not _ID.fullmatch(nid) or await ctx.blocking(current_state, ctx.engine, who.tenant_id, nid) is None:
        raise not_found("notification")
    moved = await ctx.blocking(lambda: resend(ctx.engine, who.tenant_id, [nid], actor=who.actor))
    now = await ctx.blocking(current_state, ctx.engine, who.tenant_id, nid)
    return web.json_response({"id": nid, "resent": bool(moved), **(now or {})})


@routes.post("/v1/notifications:retry")
async def post_retry_bulk(request: web.Request) -> web.Response:
    """Resend the tenant's failed or ambiguous notifications matching the filters, newest first (admin)."""
    who = principal(request, "admin")
    body = await read_object(request, _RETRY_FIELDS)
    f = retry_filter(body)
    ctx = context(request)
    ids = await ctx.blocking(matching, ctx.engine, who.tenant_id, f)
    moved = await ctx.blocking(lambda: resend(ctx.engine, who.tenant_id, ids, actor=who.actor))
    return web.json_response({"resent": len(moved), "ids": moved})


def retry_filter(body: Mapping[str, object]) -> ResendFilter:
    """The filters of a bulk resend; ValidationFailed names the bad one."""
    nulls = sorted(k for k, v in body.items() if v is None)
    if nulls:  # an absent filter is left out, never null
        raise ValidationFailed(nulls[0], "must not be null")
    state = body.get("state")
    if state is not None and state not in RESENDABLE:
        raise ValidationFailed("state", f"must be one of {', '.join(RESENDABLE)}")
    limit = body.get("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BULK:
        raise ValidationFailed("limit", f"must be an integer between 1 and {MAX_BULK}")
    texts = {}
    for name in ("error_code", "since", "until"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ValidationFailed(name, "must be a string")
        texts[name] = value
    return ResendFilter(state=state, error_code=parse_text(texts["error_code"], "error_code"),
                        since=parse_time(texts["since"], "since"), until=parse_time(texts["until"], "until"),
                        limit=limit)
