"""Routes of a tenant's API keys (admin): list, create (shown once), give an expiry, revoke."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from api.context import context, principal
from api.errors import not_found
from api.keys import TENANT_ROLES, create_key, list_keys, revoke_key, set_key_expiry
from api.routes_provider import read_object
from api.routes_webhooks import path_id
from shared.clock import as_utc
from shared.errors import ValidationFailed
from shared.message import check_line

routes = web.RouteTableDef()
_KEY_ID = re.compile(r"[a-z0-9]{12}")
_CREATE_FIELDS = frozenset({"role", "label", "expires_at"})
_UPDATE_FIELDS = frozenset({"expires_at"})


def parse_expiry(value: object) -> datetime | None:
    """`expires_at`: null, or an ISO 8601 time in the future (no offset: UTC); 422 naming it otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValidationFailed("expires_at", "must be an ISO 8601 date-time or null")
    try:
        moment = as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise ValidationFailed("expires_at", "must be an ISO 8601 date-time (2027-01-31T00:00:00Z)") from None
    if moment <= datetime.now(UTC):
        raise ValidationFailed("expires_at", "must be in the future")
    return moment


def parse_new_key(body: dict[str, Any]) -> tuple[str, str | None, datetime | None]:
    """Role, label and expiry of a key a tenant admin creates; a service key is not theirs to make."""
    role = body.get("role")
    if role not in TENANT_ROLES:
        raise ValidationFailed("role", f"must be one of {', '.join(TENANT_ROLES)}")
    return str(role), check_line(body.get("label"), "label", 200) or None, parse_expiry(body.get("expires_at"))


def key_id(request: web.Request) -> str:
    """The path's key id; 404 for anything that cannot be one."""
    return path_id(request, "id", _KEY_ID, "key")


@routes.get("/v1/keys")
async def get_keys(request: web.Request) -> web.Response:
    """The tenant's keys: id, role, label, created, expires, last used, revoked; never the key (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    return web.json_response({"items": await ctx.blocking(list_keys, ctx.engine, who.tenant_id)})


@routes.post("/v1/keys")
async def post_key(request: web.Request) -> web.Response:
    """Create a key of the tenant (admin); 201 with the key, shown this once."""
    who, ctx = principal(request, "admin"), context(request)
    role, label, expires_at = parse_new_key(await read_object(request, _CREATE_FIELDS))
    key = await ctx.blocking(lambda: create_key(ctx.engine, who.tenant_id, role, label=label, expires_at=expires_at))
    item = (await ctx.blocking(lambda: list_keys(ctx.engine, who.tenant_id, key_id=key.split("_")[1])))[0]
    return web.json_response({**item, "key": key}, status=201)


@routes.patch("/v1/keys/{id}")
async def patch_key(request: web.Request) -> web.Response:
    """Give a key an expiry, or take it away with null (admin)."""
    who, ctx = principal(request, "admin"), context(request)
    kid = key_id(request)
    body = await read_object(request, _UPDATE_FIELDS)
    if "expires_at" not in body:
        raise ValidationFailed("expires_at", "is required")
    expires_at = parse_expiry(body["expires_at"])
    if not await ctx.blocking(set_key_expiry, ctx.engine, who.tenant_id, kid, expires_at):
        raise not_found("key")
    return web.json_response((await ctx.blocking(lambda: list_keys(ctx.engine, who.tenant_id, key_id=kid)))[0])


@routes.delete("/v1/keys/{id}")
async def delete_key(request: web.Request) -> web.Response:
    """Revoke a key of the tenant (admin); 204, 404 when it is not an active key of the tenant."""
    who, ctx = principal(request, "admin"), context(request)
    kid = key_id(request)
    if not await ctx.blocking(lambda: revoke_key(ctx.engine, kid, tenant_id=who.tenant_id)):
        raise not_found("key")
    return web.Response(status=204)
