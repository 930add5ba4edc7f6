"""Graph route: GET /v1.0/applications(appId='{appId}') — an app registration's credentials.

What tenantmail reads to learn a client secret's expiry when the admin did not enter it. Each
secret is listed with `hint` (its first 3 characters), `keyId`, `displayName`, `startDateTime` and
`endDateTime`, never its value; certificates with `customKeyIdentifier` (the SHA-1 thumbprint),
`endDateTime`, `type` and `usage`. The token must carry `Application.Read.All` (or
`Application.ReadWrite.All`) in `roles`, else 403 `Authorization_RequestDenied`; an unknown app is 404
`Request_ResourceNotFound` (Microsoft Graph directory error shapes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
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
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id = emu.ids.new()
    client_request_id = request.headers.get("client-request-id") or request_id
    request[NOTE_KEY].update(request_id=request_id)
    try:
        body = _application(emu, request)
    except GraphReply as reply:
        return graph_error(reply.problem, request_id=request_id, client_request_id=client_request_id,
                           now=emu.clock.now(), **reply.fields)
    select = [s.strip() for s in request.query.get("$select", "").split(",") if s.strip()]
    if select:
        body = {k: v for k, v in body.items() if k in select or k.startswith("@odata") or k == "id"}
    headers = {**base_headers(request_id, client_request_id), "Content-Type": ODATA_JSON}
    return web.Response(status=200, headers=headers, body=orjson.dumps(body))


def _application(emu: Emulator, request: web.Request) -> dict[str, Any]:
    check = emu.tokens.check(request.headers.get("Authorization"), emu.clock.now())
    if check.problem is not None:
        raise GraphReply(_TOKEN_PROBLEMS[check.problem])
    claims = check.claims or {}
    if not READ_ROLES & set(claims.get("roles") or ()):
        raise GraphReply("directory_denied")
    tenant = emu.directory.tenant(str(claims.get("tid", "")))
    app_id = request.match_info["app_id"].lower()
    app = tenant.apps.get(app_id) if tenant is not None else None
    if app is None:
        raise GraphReply("directory_not_found", ident=app_id)
    return application_resource(app)


def application_resource(app: App) -> dict[str, Any]:
    """The Graph `application` resource of an app registration (credentials without their values)."""
    return {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#applications/$entity",
        "id": app.object_id,
        "appId": app.client_id,
        "displayName": app.display_name,
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
