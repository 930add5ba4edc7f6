"""The page's dashboard pieces: the last 24 hours as an inline SVG chart (server-rendered from the time
series that GET /v1/stats/timeseries answers, so no script), and one notification with every attempt,
its request ids and its diagnosis (/ui/notifications/{id})."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from aiohttp import web

from api.context import context, principal
from api.errors import not_found
from api.page_layout import page, scrollable, when
from shared.activity import notification_detail
from shared.resend import RESENDABLE
from shared.timeseries import bucket_start, timeseries

routes = web.RouteTableDef()
_ID = re.compile(r"[0-9a-f]{32}")
_W, _H, _PAD_L, _PAD_B, _TOP = 720, 200, 36, 22, 10
_ATTEMPT_COLUMNS = (("attempt_no", "#"), ("started_at", "Started"), ("outcome", "Outcome"),
                    ("http_status", "HTTP status"), ("smtp_status", "SMTP status"), ("error_code", "Error code"),
                    ("error_message", "Error message"), ("request_id", "Request id"),
                    ("client_request_id", "Client request id"), ("latency_ms", "Latency (ms)"),
                    ("retry_after_s", "Retry-After (s)"), ("mailbox", "Mailbox"), ("worker", "Worker"))


def last_day(engine: Any, tenant_id: str, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The tenant's 24 hourly buckets up to now (the current hour last)."""
    until = now or datetime.now(UTC)
    since = bucket_start(until, 3600) - timedelta(hours=23)
    series: list[dict[str, Any]] = timeseries(engine, [tenant_id], bucket="1h", since=since, until=until)["series"]
    return series


def chart_html(series: list[dict[str, Any]]) -> str:
    """Sent and failed per hour as bars, with the numbers in a table for screen readers and copying."""
    top = max([1, *(max(b["sent"], b["failed"]) for b in series)])
    slot = (_W - _PAD_L) / max(1, len(series))
    plot_h = _H - _PAD_B - _TOP
    bars, labels = [], []
    for i, b in enumerate(series):
        x = _PAD_L + i * slot
        for j, kind in enumerate(("sent", "failed")):
            h = plot_h * b[kind] / top
            bars.append(f"<rect class='bar-{kind}' x='{x + 2 + j * (slot - 4) / 2:.1f}' y='{_TOP + plot_h - h:.1f}' "
                        f"width='{(slot - 4) / 2:.1f}' height='{h:.1f}'><title>{escape(b['start'][11:16])} UTC: "
                        f"{b[kind]} {kind}</title></rect>")
        if i % 3 == 0:
            labels.append(f"<text x='{x + slot / 2:.1f}' y='{_H - 6}' text-anchor='middle'>"
                          f"{escape(b['start'][11:16])}</text>")
    axes = (f"<line class='axis' x1='{_PAD_L}' y1='{_TOP + plot_h}' x2='{_W}' y2='{_TOP + plot_h}'/>"
            f"<text x='{_PAD_L - 4}' y='{_TOP + 8}' text-anchor='end'>{top}</text>"
            f"<text x='{_PAD_L - 4}' y='{_TOP + plot_h}' text-anchor='end'>0</text>")
    sent, failed = sum(b["sent"] for b in series), sum(b["failed"] for b in series)
    rows = "".join(f"<tr><td>{escape(b['start'][11:16])}</td><td>{b['sent']}</td><td>{b['failed']}</td>"
                   f"<td>{b['waiting']}</td></tr>" for b in series)
    return (f"<section id='last-day'><h2>Last 24 hours</h2><figure class='chart'><svg id='chart' role='img' "
            f"viewBox='0 0 {_W} {_H}' aria-labelledby='chart-title'><title id='chart-title'>Sent ({sent}) and "
            f"failed ({failed}) per hour over the last 24 hours, by enqueue time (UTC)</title>{axes}"
            f"{''.join(bars)}{''.join(labels)}</svg><figcaption><span class='legend-sent'>■</span> sent "
            f"<span class='legend-failed'>■</span> failed, per hour enqueued (UTC)</figcaption></figure>"
            "<details><summary>Chart data</summary>" + scrollable("Chart data", (
                "<table id='chart-data'><thead><tr><th scope='col'>Hour (UTC)</th><th scope='col'>Sent</th>"
                f"<th scope='col'>Failed</th><th scope='col'>Waiting</th></tr></thead><tbody>{rows}</tbody></table>"))
            + "</details></section>")


@routes.get("/ui/notifications/{id}")
async def notification_page(request: web.Request) -> web.Response:
    """One notification of the caller's tenant: its fields, diagnosis and every delivery attempt."""
    who = principal(request)
    nid = request.match_info["id"]
    ctx = context(request)
    item = await ctx.blocking(notification_detail, ctx.engine, who.tenant_id, nid) if _ID.fullmatch(nid) else None
    if item is None:
        raise not_found("notification")
    return page(f"Notification {nid}", _fields_html(item) + _diagnosis_html(item)
                + _retry_html(item, admin=who.may("admin")) + _attempts_html(item["attempts"])
                + "<p><a href='/ui/activity'>Back to the activity</a></p>")


def _fields_html(item: dict[str, Any]) -> str:
    fields = (("State", item["state"]), ("Subject", item["subject"]), ("To", ", ".join(item["to"])),
              ("Sender", item["sender"] or ""), ("Created", when(item["created_at"])),
              ("Updated", when(item["updated_at"])), ("Sent", when(item["sent_at"] or "")),
              ("Attempts", str(len(item["attempts"]))), ("Possible duplicate", "yes" if item["possible_duplicate"]
                                                          else "no"),
              ("Last status", str(item["last_status"] or "")), ("Last error code", item["last_error_code"] or ""),
              ("Graph request id", item["graph_request_id"] or ""))
    rows = "".join(f"<dt>{name}</dt><dd>{value if name in ('Created', 'Updated', 'Sent') else escape(value)}</dd>"
                   for name, value in fields)
    return f"<dl class='fields' id='notification'>{rows}</dl>"


def _diagnosis_html(item: dict[str, Any]) -> str:
    d = item["diagnosis"]
    if not d:
        return ""
    return (f"<article id='diagnosis'><h2>Diagnosis</h2><p>{escape(d['cause'])}</p><p><strong>Fix:</strong> "
            f"{escape(d['fix'])}</p></article>")


def _retry_html(item: dict[str, Any], *, admin: bool) -> str:
    if not admin or item["state"] not in RESENDABLE:
        return ""
    return (f"<form method='post' action='/ui/activity/retry' class='retry'><input type='hidden' name='id' "
            f"value='{escape(item['id'])}'><button id='retry'>Retry</button></form>")


def _attempts_html(attempts: list[dict[str, Any]]) -> str:
    if not attempts:
        return "<h2>Attempts</h2><p id='no-attempts'>No attempt yet.</p>"
    head = "".join(f"<th scope='col'>{label}</th>" for _, label in _ATTEMPT_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(name, a.get(name))}</td>" for name, _ in _ATTEMPT_COLUMNS)
                   + "</tr>" for a in attempts)
    return "<h2>Attempts</h2>" + scrollable(
        "Attempts", f"<table id='attempts'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def _cell(name: str, value: object) -> str:
    if value is None:
        return ""
    if name == "started_at":
        return when(str(value))
    if name == "latency_ms" and isinstance(value, float):
        return f"{value:.0f}"
    return escape(str(value))
