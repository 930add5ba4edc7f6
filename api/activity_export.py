"""CSV export of the activity, streamed: GET /v1/activity/export and the page's GET /ui/activity/export.

Same filters as GET /v1/activity (checked before the first byte, so a bad one is a JSON 422). The rows
are read a page at a time (keyset, newest first) and written as they come, so an export of a million
notifications holds one page in memory. A cell a spreadsheet would read as a formula (starting with
=, +, -, @, tab or CR) gets a leading apostrophe: a subject is the producer's text, not ours.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from api.context import context, principal
from api.routes_activity import activity_filter
from api.security import SECURITY_HEADERS
from shared.activity import ActivityFilter, list_activity

routes = web.RouteTableDef()
COLUMNS = ("id", "created_at", "state", "to", "subject", "sender", "attempts", "last_status", "last_error_code",
           "graph_request_id", "possible_duplicate", "sent_at", "updated_at")
_PAGE_ROWS = 500
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@routes.get("/v1/activity/export")
async def export_activity(request: web.Request) -> web.StreamResponse:
    """The tenant's notifications matching the filters as CSV, newest first, streamed."""
    return await _stream(request)


@routes.get("/ui/activity/export")
async def export_activity_page(request: web.Request) -> web.StreamResponse:
    """The page's Export CSV link: the filters of the activity form it sits under."""
    return await _stream(request, page=True)


async def _stream(request: web.Request, *, page: bool = False) -> web.StreamResponse:
    who = principal(request)
    query = {k: v for k, v in request.query.items() if v} if page else request.query  # the form's empty fields
    filters = activity_filter(query)
    response = web.StreamResponse(headers={
        **SECURITY_HEADERS, "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
        "Content-Disposition": 'attachment; filename="activity.csv"'})
    await response.prepare(request)
    await response.write(_line(COLUMNS))
    ctx = context(request)
    cursor: str | None = None
    while True:
        chunk = await ctx.blocking(_page_of, ctx, who.tenant_id, filters, cursor)
        await response.write(b"".join(_line(_cells(item)) for item in chunk["items"]))
        cursor = chunk["next_cursor"]
        if cursor is None:
            break
    await response.write_eof()
    return response


def _page_of(ctx: Any, tenant_id: str, filters: ActivityFilter, cursor: str | None) -> dict[str, Any]:
    return list_activity(ctx.engine, tenant_id, filters, cursor=cursor, limit=_PAGE_ROWS)


def _cells(item: Mapping[str, Any]) -> list[str]:
    values = {**item, "to": " ".join(item["to"])}
    return [_safe(values.get(c)) for c in COLUMNS]


def _safe(value: object) -> str:
    text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _line(cells: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode()
