"""The admin's web page, server-rendered: Settings > Email provider, Send test, View activity.

No build step and no JavaScript needed. The page authenticates with the API key kept in an
HttpOnly, SameSite=Strict cookie set by a small login form (SameSite=Strict also keeps other
sites from posting the forms). It calls the same services as the JSON API.
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web

from api import provider_service
from api.activity_queries import ActivityFilter, list_activity
from api.context import context, principal
from api.errors import ApiError
from api.keys import authenticate
from api.middleware import COOKIE
from api.test_send import send_test
from shared.clouds import CLOUDS
from shared.errors import ValidationFailed
from shared.events import recent_events

routes = web.RouteTableDef()
_FIELDS = (("sender_name", "Sender name"), ("sender_address", "Sender email address"),
           ("reply_to", "Reply-to address"), ("azure_tenant", "Azure tenant ID"),
           ("client_id", "Application (client) ID"), ("client_secret", "Client secret"),
           ("secret_expires_at", "Secret expiry date (optional, YYYY-MM-DD)"))
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}label{display:block;"
          "margin:.5rem 0}input,select{width:28rem}.error{color:#b00020}.ok{color:#0a7d28}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .4rem;font-size:.9rem}")


def _page(title: str, body: str) -> web.Response:
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)} · tenantmail</title>"
            f"<style>{_STYLE}</style></head><body><nav><a href='/ui/email-provider'>Settings &gt; Email provider"
            f"</a> · <a href='/ui/activity'>Activity</a></nav><h1>{escape(title)}</h1>{body}</body></html>")
    return web.Response(text=html, content_type="text/html")


@routes.get("/ui/login")
async def login_form(_request: web.Request) -> web.Response:
    """The login form: paste an API key."""
    return _page("Sign in", "<form method='post' action='/ui/login'><label>API key <input type='password' "
                            "name='key' autocomplete='off'></label><button>Sign in</button></form>")


@routes.post("/ui/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Check the key and keep it in the cookie."""
    key = str((await request.post()).get("key", "")).strip()
    ctx = context(request)
    if not key or await ctx.blocking(authenticate, ctx.engine, key) is None:
        return _page("Sign in", "<p class='error'>That API key is not valid.</p><p><a href='/ui/login'>Retry</a></p>")
    response = web.Response(status=303, headers={"Location": "/ui/email-provider"})
    response.set_cookie(COOKIE, key, httponly=True, samesite="Strict", secure=ctx.settings.api_cookie_secure,
                        path="/ui")
    return response


@routes.get("/ui")
async def home(_request: web.Request) -> web.StreamResponse:
    """Redirect to the settings page."""
    raise web.HTTPSeeOther("/ui/email-provider")


@routes.get("/ui/email-provider")
async def provider_page(request: web.Request) -> web.Response:
    """The configuration in force and, with ?edit=1, the edit form."""
    who = principal(request)
    current = await provider_service.view(context(request), who.tenant_id)
    body = _current_html(current)
    if request.query.get("edit") and who.may("admin"):
        body += _form_html(_values_of(current), None)
    elif who.may("admin"):
        body += "<p><a href='/ui/email-provider?edit=1'>Edit</a></p>" + _test_form()
    return _page("Email provider", body)


@routes.post("/ui/email-provider")
async def provider_save(request: web.Request) -> web.Response:
    """Save; on failure the form comes back with the error inline and the entered values (not the secret)."""
    who = principal(request, "admin")
    form = {k: str(v) for k, v in (await request.post()).items()}
    ctx = context(request)
    try:
        current = await provider_service.save(ctx, who, form)
    except (ApiError, ValidationFailed) as exc:
        error = exc if isinstance(exc, ApiError) else ApiError(422, "validation_failed", str(exc), field=exc.field)
        current = await provider_service.view(ctx, who.tenant_id)
        kept = {k: v for k, v in form.items() if k != "client_secret"}
        return _page("Email provider", _current_html(current) + _form_html(kept, error))
    return _page("Email provider", "<p class='ok'>Saved; the credentials were accepted by Entra ID.</p>"
                 + _current_html(current) + _test_form())


@routes.post("/ui/email-provider/test")
async def provider_test(request: web.Request) -> web.Response:
    """Send test and show its outcome."""
    who = principal(request, "admin")
    to = str((await request.post()).get("to", ""))
    ctx = context(request)
    try:
        result = await send_test(ctx, who, {"to": to})
    except ValidationFailed as exc:
        result = {"result": "failed", "code": "validation_failed", "message": str(exc)}
    except ApiError as exc:
        result = {"result": "failed", "code": exc.code, "message": exc.message}
    current = await provider_service.view(ctx, who.tenant_id)
    return _page("Email provider", _result_html(result) + _current_html(current) + _test_form(to))


@routes.get("/ui/activity")
async def activity_page(request: web.Request) -> web.Response:
    """The activity table with status and error code filters."""
    who = principal(request)
    q = request.query
    filters = ActivityFilter(status=q.get("status") or None, error_code=q.get("error_code") or None,
                             recipient=q.get("recipient") or None)
    ctx = context(request)
    page = await ctx.blocking(lambda: list_activity(ctx.engine, who.tenant_id, filters,
                                                    cursor=q.get("cursor") or None, limit=50))
    rows = "".join(
        f"<tr><td>{escape(str(i['created_at']))}</td><td>{escape(i['state'])}</td><td>{escape(', '.join(i['to']))}"
        f"</td><td>{escape(i['subject'])}</td><td>{escape(i['last_error_code'] or '')}</td><td>"
        f"{escape(i['diagnosis']['cause'] + ' Fix: ' + i['diagnosis']['fix'] if i['diagnosis'] else '')}</td></tr>"
        for i in page["items"])
    more = (f"<p><a href='/ui/activity?cursor={escape(page['next_cursor'])}'>Older</a></p>"
            if page["next_cursor"] else "")
    filters_html = ("<form method='get'>" + "".join(
        f"<label>{label} <input name='{n}' value='{escape(q.get(n, ''))}'></label>"
        for n, label in (("status", "Status"), ("error_code", "Error code"), ("recipient", "Recipient")))
        + "<button>Filter</button></form>")
    table = ("<table><tr><th>Time</th><th>Status</th><th>Recipient</th><th>Subject</th><th>Error code</th>"
             f"<th>Diagnosis</th></tr>{rows}</table>")
    events = await ctx.blocking(lambda: recent_events(ctx.engine, who.tenant_id, limit=20))
    event_rows = "".join(
        f"<tr><td>{escape(e['created_at'])}</td><td>{escape(e['kind'])}</td><td>{escape(e['code'] or '')}</td>"
        f"<td>{escape(e['detail'] or '')}</td><td>{escape(e['actor'] or '')}</td></tr>" for e in events)
    events_html = ("<h2>Settings events</h2><table id='events'><tr><th>Time</th><th>Event</th><th>Code</th>"
                   f"<th>Detail</th><th>By</th></tr>{event_rows}</table>")
    return _page("Activity", filters_html + table + more + events_html)


def _values_of(current: dict[str, Any]) -> dict[str, str]:
    values = {k: str(current.get(k) or "") for k, _ in _FIELDS if k != "client_secret"}
    values["cloud"] = str(current.get("cloud") or "global")
    values["provider"] = "customer"
    return values


def _current_html(c: dict[str, Any]) -> str:
    if c["provider"] == "platform":
        return (f"<p>Provider: <b>Platform default</b>, sending as {escape(c['sender_address'])} "
                f"(version {c['version']}).</p>")
    secret = c["client_secret"]
    expired = "<p class='error'>Credentials expired: save a new client secret.</p>" if c["status"] != "active" else ""
    days = secret.get("expires_in_days")
    if not expired and days is not None and days <= 30:
        expired = (f"<p class='error' id='expiry-warning'>The client secret expires in {days} day(s): create a new "
                   "one in Entra ID and save it here.</p>")
    return (f"{expired}<p>Provider: <b>Customer provided</b> · Microsoft Graph · version {c['version']}</p><ul>"
            f"<li>Sender: {escape(c['sender_name'] or '')} &lt;{escape(c['sender_address'])}&gt;</li>"
            f"<li>Reply-to: {escape(c['reply_to'] or '')}</li><li>Azure tenant ID: {escape(c['azure_tenant'])}</li>"
            f"<li>Application (client) ID: {escape(c['client_id'])}</li><li>Cloud: {escape(c['cloud'])}</li>"
            f"<li>Client secret: ••••{escape(secret['last4'] or '')} expires {escape(secret['expires_at'] or '?')}"
            f"</li></ul>")


def _form_html(values: dict[str, str], error: ApiError | None) -> str:
    def field(name: str, label: str) -> str:
        kind = "password" if name == "client_secret" else "text"
        hint = " (leave blank to keep the stored one)" if name == "client_secret" else ""
        err = (f"<div class='error' id='error-{name}'>{escape(error.message)}{_fix(error)}</div>"
               if error is not None and error.field == name else "")
        return (f"<label>{label}{hint} <input type='{kind}' name='{name}' autocomplete='off' "
                f"value='{escape(values.get(name, ''))}'></label>{err}")
    general = (f"<div class='error' id='error'>{escape(error.message)}{_fix(error)}</div>"
               if error is not None and error.field not in {n for n, _ in _FIELDS} else "")
    provider = values.get("provider", "customer")
    clouds = "".join(f"<option value='{c}'{' selected' if values.get('cloud') == c else ''}>{c}</option>"
                     for c in CLOUDS)
    return (f"<form method='post' action='/ui/email-provider'>{general}"
            f"<label>Provider <select name='provider'><option value='customer'"
            f"{' selected' if provider == 'customer' else ''}>Customer provided</option><option value='platform'"
            f"{' selected' if provider == 'platform' else ''}>Platform default</option></select></label>"
            "<label>Email service <select name='service'><option value='microsoft_graph'>Microsoft Graph</option>"
            "</select></label>" + "".join(field(n, label) for n, label in _FIELDS)
            + f"<label>Cloud <select name='cloud'>{clouds}</select></label><button>Save</button></form>")


def _fix(error: ApiError) -> str:
    diagnosis = error.extra.get("diagnosis")
    return f"<br>Fix: {escape(diagnosis['fix'])}" if diagnosis else ""


def _test_form(to: str = "") -> str:
    return ("<h2>Send test</h2><form method='post' action='/ui/email-provider/test'><label>To "
            f"<input name='to' value='{escape(to)}'></label><button>Send test</button></form>"
            "<p><a href='/ui/activity'>View activity</a></p>")


def _result_html(r: dict[str, Any]) -> str:
    if r["result"] == "sent":
        return f"<p class='ok' id='test-result'>Sent. Graph request-id: {escape(str(r.get('request_id')))}</p>"
    d = r.get("diagnosis")
    text = f"{d['cause']} Fix: {d['fix']}" if d else r.get("message", "")
    return f"<p class='error' id='test-result'>Failed: {escape(str(r.get('code')))}. {escape(text)}</p>"
