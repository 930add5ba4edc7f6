"""Middlewares: JSON errors (never a stack trace), API-key authentication, known query parameters.

The body size limit is aiohttp's `client_max_size`; exceeding it raises 413, which the error
middleware turns into JSON like every other error.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from api import openapi
from api.context import PRINCIPAL_KEY, context
from api.errors import ApiError
from api.keys import PLATFORM_ROLES, authenticate
from shared.errors import ValidationFailed

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "tm_key"
_PUBLIC = ("/v1/openapi.json", "/ui/login", "/healthz")
_log = structlog.get_logger("tenantmail.api")
_STATUS_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error": {"code", "message", "field"}}`; unexpected ones are logged, not shown."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json_error(exc)
    except ValidationFailed as exc:
        return _json_error(ApiError(422, "validation_failed", str(exc), field=exc.field))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, f"http_{exc.status}")
        message = (f"the request body is over the limit of {context(request).settings.api_max_body_bytes} bytes"
                   if exc.status == 413 else exc.reason)
        return _json_error(ApiError(exc.status, code, message, field="body" if exc.status == 413 else None))
    except Exception as exc:
        _log.error("api.unhandled", path=request.path, method=request.method, error_type=type(exc).__name__)
        return _json_error(ApiError(500, "internal", "internal error; it has been logged"))


def _json_error(exc: ApiError) -> web.Response:
    headers = {"Retry-After": str(exc.extra["retry_after_s"])} if "retry_after_s" in exc.extra else {}
    if "current_version" in exc.extra:  # 412: the version in force, as the ETag to retry with
        headers["ETag"] = f'"v{exc.extra["current_version"]}"'
    return web.json_response(exc.body(), status=exc.status, headers=headers or None)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Attach the caller's principal from `Authorization: Bearer`, `X-Api-Key` or the page's cookie."""
    if request.path in _PUBLIC or not request.path.startswith(("/v1/", "/ui")):
        return await handler(request)
    key = _presented_key(request)
    who = await context(request).blocking(authenticate, context(request).engine, key) if key else None
    if who is not None and who.role in PLATFORM_ROLES and request.path.startswith("/ui"):
        who = None  # the page is for a tenant's own people; service and platform keys work through /v1
    if who is None:
        if request.path.startswith("/ui"):
            raise web.HTTPSeeOther("/ui/login")
        raise ApiError(401, "unauthenticated", "a valid API key is required (Authorization: Bearer tm_…)")
    request[PRINCIPAL_KEY] = who = who.acting_for(request.headers.get("X-Tenant-Id"))  # docs/api.md: service keys
    structlog.contextvars.bind_contextvars(tenant_id=who.tenant_id, key_id=who.key_id)
    try:
        return await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("tenant_id", "key_id")


@web.middleware
async def known_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject query parameters the OpenAPI document does not list for the operation (422 naming the first).

    A misspelt filter (`?stauts=failed`) must fail, not silently return everything.
    """
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical.startswith("/v1/"):
        allowed = _documented_query().get((request.method.lower(), resource.canonical))
        unknown = sorted(name for name in request.query if allowed is not None and name not in allowed)
        if unknown:
            raise ValidationFailed(_printable(unknown[0]), "is not a known query parameter")
    return await handler(request)


@functools.cache
def _documented_query() -> dict[tuple[str, str], frozenset[str]]:
    return {(method, path): frozenset(p["name"] for p in op.get("parameters", ()) if p["in"] == "query")
            for path, item in openapi.document()["paths"].items() for method, op in item.items()}


def _printable(name: str) -> str:
    return name if name.isprintable() and len(name) <= 64 else ascii(name[:64])


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if request.headers.get("X-Api-Key"):
        return request.headers["X-Api-Key"].strip()
    if request.path.startswith("/ui"):
        return request.cookies.get(COOKIE)
    return None
