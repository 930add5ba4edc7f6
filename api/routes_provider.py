"""Routes of the email provider settings: GET/PUT/DELETE /v1/email-provider, history, Send test."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from api import onboarding, provider_service, sender_usage
from api.context import context, principal
from api.errors import ApiError
from api.test_send import send_test
from shared.errors import ValidationFailed

routes = web.RouteTableDef()
_TEST_FIELDS = frozenset({"to", "sender"})
_ETAG = re.compile(r'(?:W/)?"?v?([0-9]{1,9})"?')


async def read_json(request: web.Request, *, max_bytes: int | None = None) -> Any:
    """The request's JSON body; 400 saying where it is not JSON (UTF-8). `max_bytes` replaces the app's
    body limit (`api_max_body_bytes`) for a route that takes more (413 over it)."""
    raw = await request.read() if max_bytes is None else await _read_up_to(request, max_bytes)
    try:
        return json.loads(raw.decode("utf-8"))  # JSON is UTF-8 (RFC 8259), whatever charset the header claims
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long to convert
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", field="body") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON: nested too deeply", field="body") from None


async def _read_up_to(request: web.Request, max_bytes: int) -> bytes:
    too_large = ApiError(413, "body_too_large", f"the request body is over the limit of {max_bytes} bytes",
                         field="body")
    if (request.content_length or 0) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 20):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


async def read_object(request: web.Request, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object; 422 naming the first field that is not one of `fields`."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationFailed("body", "must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in fields)
    if unknown:
        raise ValidationFailed(unknown[0][:64], "is not a known field")
    return body


def etag(version: int) -> str:
    """The ETag of a provider document: its version."""
    return f'"v{version}"'


def if_match(request: web.Request) -> int | None:
    """The version an If-Match header names (`"v3"`, `W/"v3"` or `3`), None without one or with `*`;
    422 naming If-Match when it names no version."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    match = _ETAG.fullmatch(raw.strip())
    if match is None:
        raise ValidationFailed("If-Match", 'must be the ETag of GET /v1/email-provider, like "v3"')
    return int(match.group(1))


def _document(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"ETag": etag(int(body["version"]))})


@routes.get("/v1/email-provider")
async def get_provider(request: web.Request) -> web.Response:
    """The configuration in force, with its version as ETag; the secret appears only as its last 4
    characters and expiry."""
    who = principal(request)
    return _document(await provider_service.view(context(request), who.tenant_id))


@routes.put("/v1/email-provider")
async def put_provider(request: web.Request) -> web.Response:
    """Validate the fields and the credentials, then store a new version (admin); If-Match: 412 when
    another version is in force."""
    who = principal(request, "admin")
    expected = if_match(request)
    return _document(await provider_service.save(context(request), who, await read_json(request),
                                                 expected_version=expected))


@routes.delete("/v1/email-provider")
async def delete_provider(request: web.Request) -> web.Response:
    """Revert to the platform default provider (admin)."""
    who = principal(request, "admin")
    await provider_service.revert(context(request), who, expected_version=if_match(request))
    return _document(await provider_service.view(context(request), who.tenant_id))


@routes.post("/v1/email-provider/history/{version}:restore")
async def restore_version(request: web.Request) -> web.Response:
    """Make an older version the one in force again, revalidated like a save (admin)."""
    who = principal(request, "admin")
    text = request.match_info["version"]
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise ValidationFailed("version", "must be a version number from the history (1, 2, ...)")
    return _document(await provider_service.restore(context(request), who, int(text),
                                                    expected_version=if_match(request)))


@routes.get("/v1/email-provider/history")
async def get_history(request: web.Request) -> web.Response:
    """Configuration changes, newest first: version, action, changed field names, actor, time."""
    who = principal(request)
    return web.json_response({"items": await provider_service.history(context(request), who.tenant_id)})


@routes.get("/v1/email-provider/setup")
async def get_setup(request: web.Request) -> web.Response:
    """This tenant's setup guide: app registration, Mail.Send, credential, RBAC for Applications or an Access
    Policy, with its app id, sender(s) and cloud (or those given in the query)."""
    who = principal(request)
    return web.json_response(await onboarding.guide(context(request), who.tenant_id, request.query))


@routes.get("/v1/email-provider/usage")
async def get_usage(request: web.Request) -> web.Response:
    """Per sender: recipients in the rolling 24 h, limit, remaining and when the next one is free; requests
    in the 10-minute window; the tenant's external budget when set."""
    who = principal(request)
    return web.json_response(await sender_usage.usage(context(request), who.tenant_id))


@routes.post("/v1/email-provider/test")
async def post_test(request: web.Request) -> web.Response:
    """Send a test message now and report sent (request-id) or failed (code, diagnosis) (admin)."""
    who = principal(request, "admin")
    return web.json_response(await send_test(context(request), who, await read_object(request, _TEST_FIELDS)))
