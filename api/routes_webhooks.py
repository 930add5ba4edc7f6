"""Routes of a tenant's webhook endpoints (admin): /v1/webhooks CRUD, secret rotation, delivery log, replay."""

from __future__ import annotations

import re

from aiohttp import web

from api.context import ApiContext, context, principal
from api.errors import not_found
from api.routes_activity import _int
from api.routes_provider import read_object
from api.webhook_service import DELIVERY_STATES, FIELDS, Webhooks
from shared.errors import ValidationFailed

routes = web.RouteTableDef()
_ENDPOINT_ID = re.compile(r"ep_[0-9a-f]{32}")
_DELIVERY_ID = re.compile(r"[0-9a-f]{32}")
_BASE = "/v1/webhooks/{id}"
_DELIVERY = _BASE + "/deliveries/{delivery_id:[^{}/]+}"


def webhooks(ctx: ApiContext) -> Webhooks:
    """The webhook service of this app."""
    return Webhooks(ctx.engine, ctx.box, ctx.settings)


def path_id(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str:
    """A path parameter that must match `pattern`; 404 naming `what` otherwise (before the database sees it)."""
    value = request.match_info[name]
    if not pattern.fullmatch(value):
        raise not_found(what)
    return value


def endpoint_id(request: web.Request) -> str:
    """The path's endpoint id."""
    return path_id(request, "id", _ENDPOINT_ID, "webhook endpoint")


def delivery_id(request: web.Request) -> str:
    """The path's delivery id."""
    return path_id(request, "delivery_id", _DELIVERY_ID, "delivery")


@routes.get("/v1/webhooks")
async def list_endpoints(request: web.Request) -> web.Response:
    """The tenant's endpoints (admin); never their secrets."""
    who, ctx = principal(request, "admin"), context(request)
    return web.json_response({"items": await ctx.blocking(webhooks(ctx).list, who.tenant_id)})


@routes.post("/v1/webhooks")
async def create_endpoint(request: web.Request) -> web.Response:
    """Create an endpoint (admin); 201 with its signing secret, shown this once."""
    who, ctx = principal(request, "admin"), context(request)
    body = await read_object(request, FIELDS)
    return web.json_response(await ctx.blocking(webhooks(ctx).create, who.tenant_id, body), status=201)


@routes.get(_BASE)
async def get_endpoint(request: web.Request) -> web.Response:
    """One endpoint (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    return web.json_response(await ctx.blocking(webhooks(ctx).get, who.tenant_id, endpoint_id(request)))


@routes.patch(_BASE)
async def update_endpoint(request: web.Request) -> web.Response:
    """Change url, description, event_types or enabled (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    eid = endpoint_id(request)
    body = await read_object(request, FIELDS)
    return web.json_response(await ctx.blocking(webhooks(ctx).update, who.tenant_id, eid, body))


@routes.delete(_BASE)
async def delete_endpoint(request: web.Request) -> web.Response:
    """Delete an endpoint with its deliveries (admin); 204."""
    who, ctx = principal(request, "admin"), context(request)
    await ctx.blocking(webhooks(ctx).delete, who.tenant_id, endpoint_id(request))
    return web.Response(status=204)


@routes.post(_BASE + "/secret:rotate")
async def rotate_secret(request: web.Request) -> web.Response:
    """A new signing secret, shown this once; the previous one signs beside it for the grace period (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    return web.json_response(await ctx.blocking(webhooks(ctx).rotate, who.tenant_id, endpoint_id(request)))


@routes.get(_BASE + "/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """The endpoint's delivery log, newest first, filtered by `state`, paged by `cursor` (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    eid, q = endpoint_id(request), request.query
    state = q.get("state")
    if state is not None and state not in DELIVERY_STATES:
        raise ValidationFailed("state", f"must be one of {', '.join(DELIVERY_STATES)}")
    cursor = q.get("cursor")
    if cursor is not None and not _DELIVERY_ID.fullmatch(cursor):
        raise ValidationFailed("cursor", "is not a cursor this API returned")
    limit = _int(q.get("limit"), "limit", 50, 1, 200)
    return web.json_response(await ctx.blocking(lambda: webhooks(ctx).deliveries(
        who.tenant_id, eid, state=state, cursor=cursor, limit=limit)))


@routes.get(_DELIVERY)
async def get_delivery(request: web.Request) -> web.Response:
    """One delivery: its event's payload and every attempt's status code or error (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    eid, did = endpoint_id(request), delivery_id(request)
    return web.json_response(await ctx.blocking(webhooks(ctx).delivery, who.tenant_id, eid, did))


@routes.post(_DELIVERY + ":replay")
async def replay_delivery(request: web.Request) -> web.Response:
    """Deliver again (same webhook-id, fresh retry window); 202 (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    eid, did = endpoint_id(request), delivery_id(request)
    return web.json_response(await ctx.blocking(webhooks(ctx).replay, who.tenant_id, eid, did), status=202)
