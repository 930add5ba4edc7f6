"""The admin page's Settings > Webhooks and Settings > API keys (server-rendered, no JavaScript).

Same services as the JSON API. A signing secret or a key appears once, on the page that answers its
creation (or rotation), and never again.
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web

from api.context import ApiContext, context, principal
from api.errors import ApiError, not_found
from api.keys import TENANT_ROLES, create_key, list_keys, revoke_key
from api.page_layout import page as _page
from api.routes_keys import key_id, parse_new_key
from api.routes_webhooks import endpoint_id, webhooks
from api.security import CSRF_FIELD
from shared.errors import ValidationFailed
from shared.webhooks import EVENT_TYPES

routes = web.RouteTableDef()
_ACTIONS = ("rotate", "enable", "disable", "delete", "replay")


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str) and k != CSRF_FIELD}


def _error(exc: Exception) -> str:
    message = exc.message if isinstance(exc, ApiError) else str(exc)
    return f"<p class='error' id='error'>{escape(message)}</p>"


def _once(what: str, value: str) -> str:
    return (f"<p class='ok' id='shown-once'>{escape(what)}, shown this once: <code id='secret'>{escape(value)}</code>"
            "</p>")


@routes.get("/ui/webhooks")
async def webhooks_page(request: web.Request) -> web.Response:
    """The tenant's endpoints and the form that adds one (admin)."""
    who = principal(request, "admin")
    return await _webhooks_html(context(request), who.tenant_id, "")


@routes.post("/ui/webhooks")
async def webhooks_create(request: web.Request) -> web.Response:
    """Add an endpoint; its signing secret is shown this once."""
    who, ctx = principal(request, "admin"), context(request)
    form = await _form(request)
    body: dict[str, Any] = {"url": form.get("url", ""), "description": form.get("description", "")}
    types = [t for t in EVENT_TYPES if form.get(f"type:{t}")]
    body["event_types"] = types or list(EVENT_TYPES)
    try:
        created = await ctx.blocking(webhooks(ctx).create, who.tenant_id, body)
    except (ApiError, ValidationFailed) as exc:
        return await _webhooks_html(ctx, who.tenant_id, _error(exc))
    return await _webhooks_html(ctx, who.tenant_id, _once("Signing secret", created["secret"]))


@routes.get("/ui/webhooks/{id}")
async def endpoint_page(request: web.Request) -> web.Response:
    """One endpoint: rotate, enable or disable, delete, and its delivery log with Replay."""
    who = principal(request, "admin")
    return await _endpoint_html(context(request), who.tenant_id, endpoint_id(request), "")


@routes.post("/ui/webhooks/{id}")
async def endpoint_action(request: web.Request) -> web.StreamResponse:
    """`action`: rotate (new secret shown once), enable, disable, delete, or replay `delivery_id`."""
    who, ctx = principal(request, "admin"), context(request)
    eid, form = endpoint_id(request), await _form(request)
    service, action = webhooks(ctx), form.get("action", "")
    note = ""
    try:
        if action not in _ACTIONS:
            raise ValidationFailed("action", f"must be one of {', '.join(_ACTIONS)}")
        if action == "delete":
            await ctx.blocking(service.delete, who.tenant_id, eid)
            raise web.HTTPSeeOther("/ui/webhooks")
        if action == "rotate":
            note = _once("New signing secret", (await ctx.blocking(service.rotate, who.tenant_id, eid))["secret"])
        elif action == "replay":
            await ctx.blocking(service.replay, who.tenant_id, eid, form.get("delivery_id", ""))
            note = "<p class='ok' id='replayed'>Queued again.</p>"
        else:
            await ctx.blocking(service.update, who.tenant_id, eid, {"enabled": action == "enable"})
    except (ApiError, ValidationFailed) as exc:
        if isinstance(exc, ApiError) and exc.status == 404:
            raise
        note = _error(exc)
    return await _endpoint_html(ctx, who.tenant_id, eid, note)


async def _webhooks_html(ctx: ApiContext, tenant_id: str, note: str) -> web.Response:
    items = await ctx.blocking(webhooks(ctx).list, tenant_id)
    rows = "".join(f"<tr><td><a href='/ui/webhooks/{e['id']}'>{escape(e['url'])}</a></td>"
                   f"<td>{'enabled' if e['enabled'] else 'disabled: ' + escape(e['disabled_reason'] or '')}</td>"
                   f"<td>{escape(', '.join(e['event_types']))}</td></tr>" for e in items)
    boxes = "".join(f"<label><input type='checkbox' name='type:{t}' checked> {t}</label>" for t in EVENT_TYPES)
    form = ("<h2>Add an endpoint</h2><form method='post' action='/ui/webhooks' id='webhook-form'><label>URL "
            "<input type='text' name='url'></label><label>Description <input type='text' name='description'>"
            f"</label><fieldset><legend>Events</legend>{boxes}</fieldset><button>Add</button></form>")
    return _page("Webhooks", f"{note}<table id='webhooks'><tr><th>URL</th><th>State</th><th>Events</th></tr>{rows}"
                             f"</table>{form}")


async def _endpoint_html(ctx: ApiContext, tenant_id: str, eid: str, note: str) -> web.Response:
    service = webhooks(ctx)
    endpoint = await ctx.blocking(service.get, tenant_id, eid)
    log = await ctx.blocking(lambda: service.deliveries(tenant_id, eid, state=None, cursor=None, limit=50))
    rows = "".join(
        f"<tr><td>{escape(d['created_at'] or '')}</td><td>{escape(d['event_type'])}</td><td>{d['state']}</td>"
        f"<td>{d['attempts']}</td><td>{d['last_status_code'] or ''}</td><td>{escape(d['last_error'] or '')}</td>"
        f"<td>{_button(eid, 'replay', 'Replay', d['id'])}</td></tr>" for d in log["items"])
    toggle = ("disable", "Disable") if endpoint["enabled"] else ("enable", "Enable")
    buttons = (("rotate", "Rotate secret"), toggle, ("delete", "Delete"))
    actions = "".join(_button(eid, a, label) for a, label in buttons)
    state = "enabled" if endpoint["enabled"] else f"disabled: {endpoint['disabled_reason'] or ''}"
    return _page("Webhook endpoint", f"{note}<p id='endpoint'>{escape(endpoint['url'])} · {escape(state)}</p>"
                 f"{actions}<h2>Deliveries</h2><table id='deliveries'><tr><th>Time</th><th>Event</th><th>State</th>"
                 f"<th>Attempts</th><th>Status</th><th>Error</th><th>Action</th></tr>{rows}</table>")


def _button(eid: str, action: str, label: str, delivery_id: str = "") -> str:
    hidden = f"<input type='hidden' name='delivery_id' value='{escape(delivery_id)}'>" if delivery_id else ""
    return (f"<form method='post' action='/ui/webhooks/{escape(eid)}' class='inline'><input type='hidden' "
            f"name='action' value='{action}'>{hidden}<button>{escape(label)}</button></form>")


@routes.get("/ui/keys")
async def keys_page(request: web.Request) -> web.Response:
    """The tenant's API keys and the form that creates one (admin)."""
    who = principal(request, "admin")
    return await _keys_html(context(request), who.tenant_id, "")


@routes.post("/ui/keys")
async def keys_create(request: web.Request) -> web.Response:
    """Create a key; it is shown this once."""
    who, ctx = principal(request, "admin"), context(request)
    form = await _form(request)
    try:
        role, label, expires_at = parse_new_key({"role": form.get("role"), "label": form.get("label") or None,
                                                 "expires_at": form.get("expires_at") or None})
    except ValidationFailed as exc:
        return await _keys_html(ctx, who.tenant_id, _error(exc))
    key = await ctx.blocking(lambda: create_key(ctx.engine, who.tenant_id, role, label=label, expires_at=expires_at))
    return await _keys_html(ctx, who.tenant_id, _once("API key", key))


@routes.post("/ui/keys/{id}/revoke")
async def keys_revoke(request: web.Request) -> web.Response:
    """Revoke one of the tenant's keys."""
    who, ctx = principal(request, "admin"), context(request)
    kid = key_id(request)
    if not await ctx.blocking(lambda: revoke_key(ctx.engine, kid, tenant_id=who.tenant_id)):
        raise not_found("key")
    return await _keys_html(ctx, who.tenant_id, "<p class='ok' id='revoked'>Revoked.</p>")


async def _keys_html(ctx: ApiContext, tenant_id: str, note: str) -> web.Response:
    items = await ctx.blocking(list_keys, ctx.engine, tenant_id)
    rows = "".join(
        f"<tr><td>{k['id']}</td><td>{k['role']}</td><td>{escape(k['label'] or '')}</td><td>{k['created_at']}</td>"
        f"<td>{k['expires_at'] or ''}</td><td>{k['last_used_at'] or ''}</td><td>"
        + (f"revoked {k['revoked_at']}" if k["revoked_at"] else
           f"<form method='post' action='/ui/keys/{k['id']}/revoke'><button>Revoke</button></form>")
        + "</td></tr>" for k in items)
    roles = "".join(f"<option value='{r}'>{r}</option>" for r in TENANT_ROLES)
    form = ("<h2>Create a key</h2><form method='post' action='/ui/keys' id='key-form'><label>Role <select "
            f"name='role'>{roles}</select></label><label>Label <input type='text' name='label'></label><label>"
            "Expires (optional, UTC) <input type='datetime-local' name='expires_at'></label><button>Create</button>"
            "</form>")
    return _page("API keys", f"{note}<table id='keys'><tr><th>Id</th><th>Role</th><th>Label</th><th>Created</th>"
                             f"<th>Expires</th><th>Last used</th><th>Action</th></tr>{rows}</table>{form}")
