"""The admin's web page, server-rendered: Settings > Email provider, Send test, View activity.

It follows the product document's Steps 5-6: Email provider > Edit > Customer provided > Microsoft
Graph > the fields > Save (the error inline, the entered values kept, the previous configuration in
force) > Send test > View activity. No build step; it works without JavaScript, and a few lines of
it hide the Graph fields while "Platform default" is chosen. The page authenticates with the API key
kept in an HttpOnly, SameSite=Strict cookie set by a small login form; every form also carries a CSRF
token (api.security). The shell, styles and static files are api.page_layout's. It calls the same
services as the JSON API.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from api import onboarding, provider_service, sender_usage
from api import page_senders as senders
from api.context import context, principal
from api.errors import ApiError
from api.keys import authenticate
from api.middleware import COOKIE
from api.page_activity import chart_html, last_day
from api.page_holds import holds_banner
from api.page_layout import page, scrollable, when
from api.page_onboarding import domain_html, guide_html
from api.routes_activity import activity_filter
from api.security import CSRF_FIELD
from api.test_send import send_test
from shared.activity import list_activity
from shared.clouds import CLOUDS
from shared.errors import ValidationFailed
from shared.events import recent_events
from shared.models import State
from shared.resend import RESENDABLE, resend
from shared.senders import DEFAULT_SENDER

routes = web.RouteTableDef()
_FIELDS = (("sender_name", "Sender name"), ("sender_address", "Sender email address"),
           ("reply_to", "Reply-to address"), ("azure_tenant", "Azure tenant ID"),
           ("client_id", "Application (client) ID"), ("client_secret", "Client secret"),
           ("secret_expires_at", "Secret expiry date (optional, YYYY-MM-DD)"),
           ("admin_contact_email", "Admin contact email (optional; reminders before the credential expires)"),
           ("daily_external_recipient_limit", "External recipients per 24 h (optional, Exchange's tenant limit)"))
# Credentials never come back into the form, whatever happened to the save.
_NOT_ECHOED = frozenset({"client_secret", "certificate_pem"})
_FORM_FIELDS = frozenset({n for n, _ in _FIELDS} | {"certificate_pem", "cloud"})
_CLOUD_LABELS = {"global": "Global", "usgov_high": "US Government GCC High", "usgov_dod": "US Government DoD",
                 "china": "China (21Vianet)"}
_page = page
_when = when


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
    """The configuration in force, Edit, Send test and View activity; with ?edit=1, the edit form."""
    who = principal(request)
    current = await provider_service.view(context(request), who.tenant_id)
    current["usage"] = await sender_usage.usage(context(request), who.tenant_id)  # the senders table shows it
    body = await holds_banner(context(request), who.tenant_id) + _current_html(current)
    if request.query.get("edit") and who.may("admin"):
        body += _form_html(_values_of(current), None)
    elif who.may("admin"):
        body += "<p><a id='edit' href='/ui/email-provider?edit=1'>Edit</a></p>" + _test_form(current)
    else:
        body += _ACTIVITY_LINK
    guide = await onboarding.guide(context(request), who.tenant_id, MultiDict())
    return _page("Email provider", body + guide_html(guide) + await _history_section(request, current))


@routes.get("/ui/email-provider/setup")
async def setup_page(request: web.Request) -> web.Response:
    """The setup guide for the values entered in its form (app id, senders, cloud), else those in force."""
    who = principal(request)
    ctx = context(request)
    query = {k: v for k, v in request.query.items() if v.strip()}  # the form sends its empty fields too
    try:
        guide = await onboarding.guide(ctx, who.tenant_id, _senders_split(query))
        error = ""
    except ValidationFailed as exc:
        guide = await onboarding.guide(ctx, who.tenant_id, MultiDict())
        error = f"<p class='error' id='guide-error'>{escape(str(exc))}</p>"
    return _page("Setup guide", error + guide_html(guide, opened=True))


def _senders_split(query: dict[str, str]) -> MultiDict[str]:
    # The form's one sender field may hold several addresses, separated by commas or spaces.
    out: MultiDict[str] = MultiDict((k, v) for k, v in query.items() if k != "sender")
    for address in query.get("sender", "").replace(",", " ").split():
        out.add("sender", address)
    return out


@routes.post("/ui/email-provider/restore")
async def provider_restore(request: web.Request) -> web.Response:
    """Restore an older version (revalidated like a save); the outcome, then the page."""
    who = principal(request, "admin")
    form = await request.post()
    ctx = context(request)
    try:
        version, expected = _int_field(form.get("version"), "version"), _int_field(form.get("expected"), "expected")
        current = await provider_service.restore(ctx, who, version, expected_version=expected)
        outcome = (f"<p class='ok' id='restored'>Restored version {version} as version {current['version']}; "
                   "its credentials were accepted by Entra ID.</p>")
    except (ApiError, ValidationFailed) as exc:
        current = await provider_service.view(ctx, who.tenant_id)
        text = exc.message if isinstance(exc, ApiError) else str(exc)
        fix = _fix(exc) if isinstance(exc, ApiError) else ""
        outcome = (f"<div class='error' id='restore-error' role='alert'>Not restored: {escape(text)}{fix}<br>The "
                   "configuration in force is unchanged.</div>")
    return _page("Email provider", outcome + _current_html(current) + _test_form(current)
                 + await _history_section(request, current))


def _int_field(value: object, name: str) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ValidationFailed(name, "must be a version number")
    return int(value)


async def _history_section(request: web.Request, current: dict[str, Any]) -> str:
    who = principal(request)
    items = await provider_service.history(context(request), who.tenant_id)
    rows = "".join(
        f"<tr><td>{i['version']}</td><td>{escape(i['action'])}"
        f"{' of version ' + str(i['restored_from']) if i.get('restored_from') else ''}</td>"
        f"<td>{escape(', '.join(i['changed_fields']))}</td><td>{escape(i['actor'] or '')}</td>"
        f"<td>{_when(i['at'] or '')}</td><td>{_restore_button(i['version'], current['version'], who.may('admin'))}"
        "</td></tr>" for i in items)
    return ("<h2>History</h2><table id='history'><tr><th>Version</th><th>Change</th><th>Fields changed</th>"
            f"<th>By</th><th>When</th><th>Action</th></tr>{rows}</table>")


def _restore_button(version: int, in_force: int, admin: bool) -> str:
    if version == in_force:
        return "in force"
    if not admin:
        return ""
    return (f"<form method='post' action='/ui/email-provider/restore' class='restore'><input type='hidden' "
            f"name='version' value='{version}'><input type='hidden' name='expected' value='{in_force}'>"
            f"<button id='restore-{version}'>Restore version {version}</button></form>")


@routes.post("/ui/email-provider")
async def provider_save(request: web.Request) -> web.Response:
    """Save; on failure the form comes back with the error inline and the entered values (not the credentials)."""
    who = principal(request, "admin")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str) and k != CSRF_FIELD}
    # The certificate is the alternative to the secret: sent only when filled in.
    form = {k: v for k, v in form.items() if k != "certificate_pem" or v.strip()}
    edited = form.pop("version", "")  # the version the form was opened on: a second admin's save is refused
    ctx = context(request)
    try:
        expected = _int_field(edited, "version") if edited else None
        body: dict[str, Any] = dict(form)
        if senders.SENDERS_FIELD in form:
            body[senders.SENDERS_FIELD] = senders.senders_from_form(form[senders.SENDERS_FIELD])
        current = await provider_service.save(ctx, who, body, expected_version=expected)
    except (ApiError, ValidationFailed) as exc:
        error = exc if isinstance(exc, ApiError) else ApiError(422, "validation_failed", str(exc), field=exc.field)
        current = await provider_service.view(ctx, who.tenant_id)
        kept = {k: v for k, v in form.items() if k not in _NOT_ECHOED}
        # After a conflict the form carries the version now in force: saving again overwrites knowingly.
        kept["version"] = str(current["version"]) if error.status == 412 else edited
        return _page("Email provider", _current_html(current) + _form_html(kept, error)
                     + await _history_section(request, current))
    return _page("Email provider", "<p class='ok' id='saved'>Saved; the credentials were accepted by Entra ID.</p>"
                 + _current_html(current) + _test_form(current))


@routes.post("/ui/email-provider/test")
async def provider_test(request: web.Request) -> web.Response:
    """Send test and show its outcome."""
    who = principal(request, "admin")
    posted = await request.post()
    to, sender = str(posted.get("to", "")), str(posted.get("sender", "") or DEFAULT_SENDER)
    ctx = context(request)
    try:
        result = await send_test(ctx, who, {"to": to, "sender": sender})
    except ValidationFailed as exc:
        result = {"result": "failed", "code": "validation_failed", "message": str(exc)}
    except ApiError as exc:
        result = {"result": "failed", "code": exc.code, "message": exc.message}
    current = await provider_service.view(ctx, who.tenant_id)
    return _page("Email provider", _result_html(result) + _current_html(current)
                 + _test_form(current, to, sender, opened=True))


@routes.get("/ui/activity")
async def activity_page(request: web.Request) -> web.Response:
    """The holds in force, the activity table with status, error code, recipient and time filters, then the
    settings events."""
    who = principal(request)
    q = {k: v for k, v in request.query.items() if v}  # the form sends its empty fields too
    ctx = context(request)
    try:
        filters = activity_filter(q)
        page = await ctx.blocking(lambda: list_activity(ctx.engine, who.tenant_id, filters,
                                                        cursor=q.get("cursor") or None, limit=50))
        error = ""
    except ValidationFailed as exc:
        page, error = {"items": [], "next_cursor": None}, f"<p class='error' id='filter-error'>{escape(str(exc))}</p>"
    events = await ctx.blocking(lambda: recent_events(ctx.engine, who.tenant_id, limit=20))
    series = await ctx.blocking(last_day, ctx.engine, who.tenant_id)
    banner = await holds_banner(ctx, who.tenant_id)
    return _page("Activity", banner + chart_html(series) + _filters_html(q) + error
                 + _notifications_html(page, q, admin=who.may("admin")) + _events_html(events))


@routes.post("/ui/activity/retry")
async def activity_retry(request: web.Request) -> web.Response:
    """The Retry button of a failed or ambiguous notification (admin): resend it, say so, then the activity."""
    who = principal(request, "admin")
    nid = str((await request.post()).get("id", ""))[:64]
    ctx = context(request)
    moved = await ctx.blocking(lambda: resend(ctx.engine, who.tenant_id, [nid], actor=who.actor))
    outcome = (f"<p class='ok' id='resent'>Notification {escape(nid)} is queued again.</p>" if moved else
               f"<p class='error' id='not-resent'>Notification {escape(nid)} was not resent: it is not failed or "
               "ambiguous (it may be queued or sent already).</p>")
    page = await ctx.blocking(lambda: list_activity(ctx.engine, who.tenant_id, activity_filter({}), cursor=None,
                                                    limit=50))
    return _page("Activity", outcome + _filters_html({}) + _notifications_html(page, {}, admin=True))


def _filters_html(q: Any) -> str:
    status, duplicate = q.get("status", ""), q.get("possible_duplicate", "")
    options = "".join(f"<option value='{s.value}'{' selected' if status == s.value else ''}>{s.value}</option>"
                      for s in State)
    duplicates = "".join(f"<option value='{v}'{' selected' if duplicate == v else ''}>{label}</option>"
                         for v, label in (("", "any"), ("true", "yes"), ("false", "no")))
    inputs = "".join(f"<label>{label} <input type='{kind}' name='{n}' value='{escape(q.get(n, ''))}'></label>"
                     for n, label, kind in (("error_code", "Error code", "text"),
                                            ("recipient", "Recipient (exact address)", "text"),
                                            ("since", "From (UTC)", "datetime-local"),
                                            ("until", "To (UTC)", "datetime-local")))
    return (f"<h2>Notifications</h2><form method='get' id='filters'><label>Status <select name='status'>"
            f"<option value=''>any</option>{options}</select></label>{inputs}<label>Possible duplicate <select "
            f"name='possible_duplicate'>{duplicates}</select></label><button>Filter</button></form>")


def _notifications_html(page: dict[str, Any], q: Any, *, admin: bool) -> str:
    rows = "".join(
        f"<tr><td>{_when(i['created_at'])}</td><td>{escape(i['state'])}"
        f"{escape(' (' + i['wait_reason'] + ')') if i.get('wait_reason') else ''}</td><td>{escape(', '.join(i['to']))}"
        f"</td><td><a href='/ui/notifications/{escape(i['id'])}'>{escape(i['subject'] or '(no subject)')}</a></td>"
        f"<td>{escape(i['last_error_code'] or '')}</td><td>"
        f"{escape(i['diagnosis']['cause'] + ' Fix: ' + i['diagnosis']['fix'] if i['diagnosis'] else '')}</td>"
        f"<td>{_retry_button(i) if admin else ''}</td></tr>"
        for i in page["items"])
    kept = {n: q[n] for n in _FILTERS if q.get(n)}
    more = (f"<p><a id='older' href='/ui/activity?{escape(urlencode({**kept, 'cursor': page['next_cursor']}))}'>"
            "Older</a></p>" if page["next_cursor"] else "")
    empty = "" if page["items"] else "<p id='no-notifications'>No notifications match.</p>"
    export = f"<p><a id='export' href='/ui/activity/export?{escape(urlencode(kept))}'>Export CSV</a></p>"
    return scrollable("Notifications", (
        "<table id='notifications'><tr><th>Time</th><th>Status</th><th>Recipient</th><th>Subject</th><th>Error code"
        f"</th><th>Diagnosis</th><th>Action</th></tr>{rows}</table>")) + f"{empty}{more}{export}"


def _retry_button(item: dict[str, Any]) -> str:
    if item["state"] not in RESENDABLE:
        return ""
    flag = " (may duplicate)" if item["state"] == State.AMBIGUOUS.value or item["possible_duplicate"] else ""
    return (f"<form method='post' action='/ui/activity/retry' class='retry'><input type='hidden' name='id' "
            f"value='{escape(item['id'])}'><button id='retry-{escape(item['id'])}'>Retry{flag}</button></form>")


def _events_html(events: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_when(e['created_at'])}</td><td>{escape(e['kind'])}</td><td>{escape(e['code'] or '')}</td>"
        f"<td>{escape(e['request_id'] or '')}</td><td>{escape(e['detail'] or '')}</td><td>{escape(e['actor'] or '')}"
        "</td></tr>" for e in events)
    return ("<h2>Settings events and test sends</h2><table id='events'><tr><th>Time</th><th>Event</th><th>Code</th>"
            f"<th>Request id</th><th>Detail</th><th>By</th></tr>{rows}</table>")


def _values_of(current: dict[str, Any]) -> dict[str, str]:
    values = {k: str(current.get(k) or "") for k in _FORM_FIELDS if k not in _NOT_ECHOED}
    credential = current.get("client_secret") or current.get("certificate") or {}
    values["secret_expires_at"] = str(credential.get("expires_at") or "")[:10]
    values["cloud"] = str(current.get("cloud") or "global")
    values["provider"] = str(current.get("provider") or "platform")
    values["version"] = str(current.get("version", ""))
    values[senders.SENDERS_FIELD] = senders.form_text(current)
    return values


def _current_html(c: dict[str, Any]) -> str:
    if c["provider"] == "platform":
        relay = " The platform's mail relay is not configured yet." if c.get("status") == "not_configured" else ""
        return (f"<p id='current'>Provider: <b>Platform default</b>, sending as {escape(c['sender_address'])} "
                f"(version {c['version']}).{relay}</p>" + domain_html(c.get("domain_checks")))
    secret, certificate = c.get("client_secret"), c.get("certificate")
    credential = secret or certificate or {}
    expired = ("<p class='error' id='credentials-expired'>Credentials expired: save a new client secret or "
               "certificate.</p>" if c["status"] != "active" else "")
    days = credential.get("expires_in_days")
    if not expired and secret and not secret.get("expires_at"):
        expired = ("<p class='error' id='expiry-unknown'>Expiry unknown: no reminders. Enter the secret's expiry "
                   "date (Entra ID &gt; App registrations &gt; your app &gt; Certificates &amp; secrets, column "
                   "Expires) under Edit, leaving the secret blank; or grant the app Application.Read.All so it is "
                   "read from Microsoft Graph on save.</p>")
    if not expired and days is not None and days <= 30:
        what = "client secret" if secret else "certificate"
        expired = (f"<p class='error' id='expiry-warning'>The {what} expires in {days} day(s): create a new "
                   "one in Entra ID and save it here.</p>")
    held = (f"Client secret: ••••{escape(secret.get('last4') or '')}" if secret else
            f"Certificate: thumbprint {escape(str(credential.get('thumbprint') or ''))}")
    return (f"{expired}<div id='current'><p>Provider: <b>Customer provided</b> · Microsoft Graph · version "
            f"{c['version']}</p><ul><li>Sender: {escape(c['sender_name'] or '')} &lt;{escape(c['sender_address'])}"
            f"&gt;</li><li>Reply-to: {escape(c['reply_to'] or '')}</li><li>Azure tenant ID: "
            f"{escape(c['azure_tenant'])}</li><li>Application (client) ID: {escape(c['client_id'])}</li><li>Cloud: "
            f"{escape(_CLOUD_LABELS.get(c['cloud'], c['cloud']))}</li><li>{held} expires "
            f"{escape(credential.get('expires_at') or '?')}</li><li>Admin contact for reminders: "
            f"{escape(c.get('admin_contact_email') or 'none')}</li></ul>{senders.table_html(c)}</div>"
            + domain_html(c.get("domain_checks")))


def _form_html(values: dict[str, str], error: ApiError | None) -> str:
    def field(name: str, label: str) -> str:
        kind = "password" if name == "client_secret" else "text"
        hint = " (leave blank to keep the stored one)" if name == "client_secret" else ""
        return (f"<label>{label}{hint} <input type='{kind}' name='{name}' autocomplete='off' "
                f"value='{escape(values.get(name, ''))}'></label>{_field_error(error, name)}")

    summary = (f"<div class='error' id='error' role='alert'>Not saved: {escape(error.message)}{_fix(error)}"
               "<br>The previous configuration is still in force.</div>" if error is not None else "")
    provider = values.get("provider", "customer")
    radios = "".join(f"<label><input type='radio' name='provider' value='{v}'{' checked' if provider == v else ''}>"
                     f" {label}</label>" for v, label in (("platform", "Platform default"),
                                                          ("customer", "Customer provided")))
    clouds = "".join(f"<option value='{c}'{' selected' if values.get('cloud') == c else ''}>"
                     f"{escape(_CLOUD_LABELS.get(c, c))}</option>" for c in CLOUDS)
    certificate = ("<label>Certificate with private key (PEM, the alternative to a secret) <textarea "
                   "name='certificate_pem' autocomplete='off'></textarea></label>"
                   + _field_error(error, "certificate_pem"))
    version = f"<input type='hidden' name='version' value='{escape(values.get('version', ''))}'>"
    return (f"<form method='post' action='/ui/email-provider' id='provider-form'>{summary}{version}"
            f"<fieldset><legend>Provider</legend>{radios}</fieldset><fieldset id='customer-fields'>"
            "<label>Email service <select name='service'><option value='microsoft_graph'>Microsoft Graph</option>"
            "</select></label>" + "".join(field(n, label) for n, label in _FIELDS) + certificate
            + f"<label>Cloud <select name='cloud'>{clouds}</select></label>{_field_error(error, 'cloud')}"
            + senders.form_html(values.get(senders.SENDERS_FIELD, "")) + _senders_error(error) + "</fieldset>"
            "<button>Save</button> <a href='/ui/email-provider'>Cancel</a></form>")


def _senders_error(error: ApiError | None) -> str:
    # Every senders.* field error shows under the one textarea.
    if error is None or not (error.field or "").startswith(senders.SENDERS_FIELD):
        return ""
    return f"<div class='error' id='error-senders'>{escape(error.message)}</div>"


def _field_error(error: ApiError | None, name: str) -> str:
    if error is None or error.field != name:
        return ""
    return f"<div class='error' id='error-{name}'>{escape(error.message)}{_fix(error)}</div>"


def _fix(error: ApiError) -> str:
    diagnosis = error.extra.get("diagnosis")
    return f"<br>Fix: {escape(diagnosis['fix'])}" if diagnosis else ""


_FILTERS = ("status", "error_code", "recipient", "since", "until", "possible_duplicate")
_ACTIVITY_LINK = "<p><a id='view-activity' href='/ui/activity'>View activity</a></p>"


def _test_form(current: dict[str, Any], to: str = "", sender: str = DEFAULT_SENDER, *,
               opened: bool = False) -> str:
    return (f"<details id='send-test'{' open' if opened else ''}><summary>Send test</summary><form method='post' "
            "action='/ui/email-provider/test'><label>Send a test message to <input type='email' name='to' "
            f"value='{escape(to)}'></label>{senders.test_choice_html(current, sender)}<button>Send test</button>"
            "</form></details>" + _ACTIVITY_LINK)


def _result_html(r: dict[str, Any]) -> str:
    if r["result"] == "sent":
        return f"<p class='ok' id='test-result'>Sent. Graph request-id: {escape(str(r.get('request_id')))}</p>"
    d = r.get("diagnosis")
    text = f"{d['cause']} Fix: {d['fix']}" if d else r.get("message", "")
    return f"<p class='error' id='test-result'>Failed: {escape(str(r.get('code')))}. {escape(text)}</p>"
