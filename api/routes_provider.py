"""Routes of the email provider settings: GET/PUT/DELETE /v1/email-provider, history, Send test."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from api import provider_service
from api.context import context, principal
from api.errors import ApiError
from api.test_send import send_test
from shared.errors import ValidationFailed

routes = web.RouteTableDef()
_TEST_FIELDS = frozenset({"to"})


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 400 saying where it is not JSON (UTF-8)."""
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))  # JSON is UTF-8 (RFC 8259), whatever charset the header claims
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON: nested too deeply", field="body") from None


async def read_object(request: web.Request, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object; 422 naming the first field that is not one of `fields`."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationFailed("body", "must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in fields)
    if unknown:
        raise ValidationFailed(unknown[0][:64], "is not a known field")
    return body


@routes.get("/v1/email-provider")
async def get_provider(request: web.Request) -> web.Response:
    """The configuration in force; the secret appears only as its last 4 characters and expiry."""
    who = principal(request)
    return web.json_response(await provider_service.view(context(request), who.tenant_id))


@routes.put("/v1/email-provider")
async def put_provider(request: web.Request) -> web.Response:
    """Validate the fields and the credentials, then store a new version (admin)."""
    who = principal(request, "admin")
    return web.json_response(await provider_service.save(context(request), who, await read_json(request)))


@routes.delete("/v1/email-provider")
async def delete_provider(request: web.Request) -> web.Response:
    """Revert to the platform default provider (admin)."""
    who = principal(request, "admin")
    await provider_service.revert(context(request), who)
    return web.json_response(await provider_service.view(context(request), who.tenant_id))


@routes.get("/v1/email-provider/history")
async def get_history(request: web.Request) -> web.Response:
    """Configuration changes, newest first: version, action, changed field names, actor, time."""
    who = principal(request)
    return web.json_response({"items": await provider_service.history(context(request), who.tenant_id)})


@routes.post("/v1/email-provider/test")
async def post_test(request: web.Request) -> web.Response:
    """Send a test message now and report sent (request-id) or failed (code, diagnosis) (admin)."""
    who = principal(request, "admin")
    return web.json_response(await send_test(context(request), who, await read_object(request, _TEST_FIELDS)))
