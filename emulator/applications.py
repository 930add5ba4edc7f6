"""Graph routes: GET /v1.0/applications(appId='{appId}') — an app registration's credentials — and
GET /v1.0/servicePrincipals(appId='{appId}') — its enterprise application (service principal) in the tenant.

What tenantmail reads to learn a client secret's expiry when the admin did not enter it. Each
secret is listed with `hint` (its first 3 characters), `keyId`, `displayName`, `startDateTime` and
`endDateTime`, never its value; certificates with `customKeyIdentifier` (the SHA-1 thumbprint),
`endDateTime`, `type` and `usage`. The token must carry `Application.Read.All` (or
`Application.ReadWrite.All`) in `roles`, else 403 `Authorization_RequestDenied`; an unknown app is 404
`Request_ResourceNotFound` (Microsoft Graph directory error shapes).

The service principal's `id` is the enterprise application's object id, which Exchange's
`New-ServicePrincipal -ObjectId` needs (not the app registration's). Microsoft documents that "a service
principal can retrieve its own application and service principal details without being granted any
application permissions" (serviceprincipal-get); with `directory_self_read` on, the app may read its own
objects without a role (off by default: the stricter answer, which tenantmail must handle).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from emulator.graph import _TOKEN_PROBLEMS, GraphReply
from emulator.graph_errors import ODATA_JSON, base_headers, graph_error
from emulator.wire import EMULATOR_KEY, NOTE_KEY

if TYPE_CHECKING:
    from emulator.directory import App
    from emulator.server import Emulator

READ_ROLES = frozenset({"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"})
_KEY_NAMESPACE = uuid.UUID("0b5e3f0e-8a52-4f43-9a3c-1f0c2d4e5a6b")


async def get_application(request: web.Request) -> web.Response:
    """Answer GET /v1.0/applications(appId='…'), honouring `$select`."""
    return _answer(request, application_resource)


async def get_service_principal(request: web.Request) -> web.Response:
    """Answer GET /v1.0/servicePrincipals(appId='…'), honouring `$select`."""
    return _answer(request, service_principal_resource)


def _answer(request: web.Request, resource: Callable[[App], dict[str, Any]]) -> web.Response:
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id = emu.ids.new()
    client_request_id = request.headers.get("client-request-id") or request_id
    request[NOTE_KEY].update(request_id=request_id)
    try:
        body = resource(_app(emu, request))
    except GraphReply as reply:
        return graph_error(reply.problem, request_id=request_id, client_request_id=client_request_id,
                           now=emu.clock.now(), **reply.fields)
    select = [s.strip() for s in request.query.get("$select", "").split(",") if s.strip()]
    if select:
        body = {k: v for k, v in body.items() if k in select or k.startswith("@odata") or k == "id"}
    headers = {**base_headers(request_id, client_request_id), "Content-Type": ODATA_JSON}
    return web.Response(status=200, headers=headers, body=orjson.dumps(body))


def _app(emu: Emulator, request: web.Request) -> App:
    check = emu.tokens.check(request.headers.get("Authorization"), emu.clock.now())
    if check.problem is not None:
        raise GraphReply(_TOKEN_PROBLEMS[check.problem])
    claims = check.claims or {}
    app_id = request.match_info["app_id"].lower()
    itself = emu.config.directory_self_read and str(claims.get("appid") or claims.get("azp") or "").lower() == app_id
    if not itself and not READ_ROLES & set(claims.get("roles") or ()):
        raise GraphReply("directory_denied")
    tenant = emu.directory.tenant(str(claims.get("tid", "")))
    app = tenant.apps.get(app_id) if tenant is not None else None
    if app is None:
        raise GraphReply("directory_not_found", ident=app_id)
    return app


def _directory_object(collection: str, object_id: str, app: App) -> dict[str, Any]:
    return {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#{collection}/$entity", "id": object_id,
            "appId": app.client_id, "displayName": app.display_name}


def service_principal_resource(app: App) -> dict[str, Any]:
    """The Graph `servicePrincipal` resource of an app's enterprise application in the tenant."""
    return {**_directory_object("servicePrincipals", app.service_principal_id, app),
            "servicePrincipalType": "Application", "accountEnabled": True}


def application_resource(app: App) -> dict[str, Any]:
    """The Graph `application` resource of an app registration (credentials without their values)."""
    return {
        **_directory_object("applications", app.object_id, app),
        "passwordCredentials": [
            {"customKeyIdentifier": None, "displayName": s.id or None, "endDateTime": _iso(s.expires_at),
             "hint": s.value[:3], "keyId": str(uuid.uuid5(_KEY_NAMESPACE, f"{app.client_id}/{s.id}/{s.value}")),
             "secretText": None, "startDateTime": None}
            for s in app.secrets],
        "keyCredentials": [
            {"customKeyIdentifier": hashlib.sha1(c.cert.public_bytes(Encoding.DER)).hexdigest().upper(),
             "displayName": c.cert.subject.rfc4514_string(), "endDateTime": _iso(c.expires_at),
             "keyId": str(uuid.uuid5(_KEY_NAMESPACE, f"{app.client_id}/{c.x5t}")), "type": "AsymmetricX509Cert",
             "usage": "Verify"}
            for c in app.certificates],
    }


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
