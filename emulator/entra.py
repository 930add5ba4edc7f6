"""Entra ID routes: OIDC discovery, instance discovery, JWKS and the client-credentials token endpoint."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from emulator.directory import DNS_RE, GUID_RE, App, Tenant
from emulator.entra_errors import ests_error
from emulator.tokens import GRAPH_RESOURCES, check_assertion
from emulator.wire import EMULATOR_KEY, NOTE_KEY, abort_connection, wait_for_fault

if TYPE_CHECKING:
    from emulator.server import Emulator

JSON_UTF8 = "application/json; charset=utf-8"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_NO_STORE = {
    "Cache-Control": "no-store, no-cache",
    "Pragma": "no-cache",
    "Expires": "-1",
    "X-Content-Type-Options": "nosniff",
    "x-ms-ests-server": "2.1.0 - EMU ProdSlices",
}
_MULTI_TENANT = frozenset({"common", "organizations", "consumers"})


class EstsError(Exception):
    """Raised inside token handling; turned into an ESTS error response."""

    def __init__(self, problem: str, **fields: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fields = fields


def _base_url(emu: Emulator, request: web.Request) -> str:
    return emu.config.advertised_base_url or f"{request.scheme}://{request.host}"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def resolve_tenant(emu: Emulator, ident: str) -> Tenant:
    """The tenant a path segment names, or EstsError (900023 / 90002)."""
    if ident == "00000000-0000-0000-0000-000000000000":
        raise EstsError("tenant_empty_guid")
    if not (GUID_RE.match(ident) or DNS_RE.match(ident)):
        raise EstsError("tenant_malformed", tenant=ident)
    tenant = emu.directory.tenant(ident)
    if tenant is None:
        raise EstsError("tenant_not_found", tenant=ident)
    return tenant


def _error_response(
    emu: Emulator, request: web.Request, exc: EstsError, error: str | None = None
) -> web.Response:
    trace_id = emu.ids.new()
    correlation_id = request.headers.get("client-request-id") or emu.ids.new()
    fields = {
        "tenant": "",
        "tenant_name": "",
        "client_id": "",
        "scope": "",
        "resource": "",
        "param": "",
        "grant_type": "",
        **exc.fields,
    }
    status, body = ests_error(
        exc.problem,
        config=emu.config,
        trace_id=trace_id,
        correlation_id=correlation_id,
        now=emu.clock.now(),
        host=request.host,
        **fields,
    )
    if error:
        body["error"] = error
    emu.inspection.counters.token_errors[str(body["error_codes"][0])] += 1
    request[NOTE_KEY]["error"] = body["error_codes"][0]
    return _json(
        status, body, {**_NO_STORE, "x-ms-request-id": trace_id, "client-request-id": correlation_id}
    )


def _discovery_doc(base: str, tid: str, tenant: Tenant | None, v2: bool) -> dict[str, Any]:
    root = f"{base}/{tid}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{root}/v2.0" if v2 else root,
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
        "kerberos_endpoint": f"{root}/kerberos",
        "tenant_region_scope": "WW",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }


async def openid_configuration(request: web.Request) -> web.Response:
    """GET /{tenant}/v2.0/.well-known/openid-configuration and /{tenant}/.well-known/openid-configuration."""
    emu: Emulator = request.app[EMULATOR_KEY]
    ident = unquote(request.match_info["tenant"])
    v2 = "/v2.0/.well-known/" in request.path
    emu.inspection.counters.discovery_requests += 1
    response = await _apply_faults(emu, request, "discovery", ident, None)
    if response is not None:
        return response
    tid = ident
    tenant = None
    if ident.lower() not in _MULTI_TENANT:
        try:
            tenant = resolve_tenant(emu, ident)
        except EstsError as exc:
            return _error_response(
                emu, request, exc, error="invalid_tenant" if exc.problem != "tenant_malformed" else None
            )
        tid = tenant.id
    headers = {"Cache-Control": "max-age=86400, private"}
    return _json(200, _discovery_doc(_base_url(emu, request), tid, tenant, v2), headers)


async def instance_discovery(request: web.Request) -> web.Response:
    """GET /common/discovery/instance (MSAL calls it after an error result)."""
    emu: Emulator = request.app[EMULATOR_KEY]
    base = _base_url(emu, request)
    host = base.split("://", 1)[-1]
    aliases = sorted(
        {host, "login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"}
    )
    return _json(
        200,
        {
            "tenant_discovery_endpoint": f"{base}/common/v2.0/.well-known/openid-configuration",
            "api-version": request.query.get("api-version", "1.1"),
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": aliases}],
        },
    )


async def jwks(request: web.Request) -> web.Response:
    """GET /{tenant}/discovery/v2.0/keys: the emulator's token signing key."""
    emu: Emulator = request.app[EMULATOR_KEY]
    return _json(200, emu.tokens.jwks())


async def _apply_faults(
    emu: Emulator, request: web.Request, route: str, ident: str, app_id: str | None
) -> web.Response | None:
    tenant = emu.directory.tenant(ident)
    keys = {ident.lower()} | ({tenant.id, *tenant.domains} if tenant else set())
    hit = emu.faults.match(route, keys, set(), app_id)
    await wait_for_fault(hit, emu.config.latency_ms / 1000.0)
    fault = hit.fault
    if fault is None:
        return None
    emu.inspection.counters.faults_injected += 1
    if fault.kind.startswith("reset"):
        emu.inspection.counters.reset_connections += 1
        return abort_connection(request)
    problem = {"429": "throttled", "503": "unavailable", "500": "server_error"}.get(fault.kind, "unavailable")
    status = fault.status or {"504": 504, "504_after_commit": 504}.get(fault.kind)
    if fault.body == "html":
        code = status or {"throttled": 429, "unavailable": 503, "server_error": 500}[problem]
        return web.Response(
            status=code, text=f"<html><body><h1>{code}</h1></body></html>", content_type="text/html"
        )
    response = _error_response(emu, request, EstsError(problem))
    if status:
        response.set_status(status)
    if fault.kind == "429" and fault.retry_after is not None:
        response.headers["Retry-After"] = fault.retry_after
    return response


async def token(request: web.Request) -> web.Response:
    """POST /{tenant}/oauth2/v2.0/token: client credentials with a secret (body or Basic) or an assertion."""
    emu: Emulator = request.app[EMULATOR_KEY]
    ident = unquote(request.match_info["tenant"])
    form = {k: str(v) for k, v in (await request.post()).items()}
    client_id, secret = _basic_credentials(request.headers.get("Authorization"))
    client_id = (form.get("client_id") or client_id or "").lower()
    secret = form.get("client_secret") or secret
    note = request[NOTE_KEY]
    note.update(form=form, tenant=ident, app_id=client_id)
    counters = emu.inspection.counters
    tenant = emu.directory.tenant(ident)
    tenant_key = tenant.id if tenant else ident.lower()
    counters.token_requests[tenant_key] += 1
    counters.token_requests_by_app[f"{tenant_key}/{client_id}"] += 1
    response = await _apply_faults(emu, request, "token", ident, client_id)
    if response is not None:
        return response
    try:
        tenant = resolve_tenant(emu, ident)
        resource = _check_request(form, tenant)
        app = _check_client(emu, tenant, client_id, secret, form)
    except EstsError as exc:
        return _error_response(emu, request, exc)
    return _issue(emu, request, tenant, app, resource)


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, _, password = decoded.partition(":")
    return unquote(user), unquote(password)


def _check_request(form: dict[str, str], tenant: Tenant) -> str:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise EstsError("missing_param", param="grant_type")
    if grant_type != "client_credentials":
        raise EstsError("grant_type", grant_type=grant_type)
    scopes = form.get("scope", "").split()
    if not scopes:
        raise EstsError("missing_scope")
    resources = []
    for scope in scopes:
        if not scope.endswith("/.default"):
            raise EstsError("scope_not_default", scope=scope)
        resources.append(scope[: -len("/.default")])
    resource = resources[0]
    if resource.rstrip("/") not in GRAPH_RESOURCES:
        raise EstsError("unknown_resource", resource=resource, tenant_name=tenant.id)
    return resource.rstrip("/")


def _check_client(
    emu: Emulator, tenant: Tenant, client_id: str, secret: str | None, form: dict[str, str]
) -> App:
    if not client_id:
        raise EstsError("missing_param", param="client_id")
    app = tenant.apps.get(client_id)
    if app is None:
        raise EstsError("app_not_found", client_id=client_id, tenant_name=tenant.display_name)
    now = emu.clock.now()
    assertion = form.get("client_assertion")
    if assertion and form.get("client_assertion_type") == ASSERTION_TYPE:
        problem = check_assertion(assertion, app, {tenant.id, *tenant.domains}, now)
        if problem is not None:
            raise EstsError(problem, client_id=client_id)
        return app
    if not secret:
        raise EstsError("no_credential")
    matching = [s for s in app.secrets if s.value == secret]
    if any(s.expires_at is None or s.expires_at > now for s in matching):
        return app
    raise EstsError("expired_secret" if matching else "wrong_secret", client_id=client_id)


def _issue(emu: Emulator, request: web.Request, tenant: Tenant, app: App, resource: str) -> web.Response:
    now = int(emu.clock.now())
    lifetime_s = int(emu.config.token_lifetime_s)
    claims: dict[str, Any] = {
        "aud": resource,
        "iss": f"https://sts.windows.net/{tenant.id}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_s,
        "appid": app.client_id,
        "azp": app.client_id,
        "app_displayname": app.display_name,
        "appidacr": "2" if request[NOTE_KEY]["form"].get("client_assertion") else "1",
        "idp": f"https://sts.windows.net/{tenant.id}/",
        "idtyp": "app",
        "oid": app.client_id,
        "sub": app.client_id,
        "tid": tenant.id,
        "uti": emu.ids.new(),
        "ver": "1.0",
    }
    if app.granted_roles:
        claims["roles"] = app.granted_roles
    access_token = emu.tokens.mint(claims)
    emu.inspection.counters.tokens_issued += 1
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": lifetime_s,
        "ext_expires_in": lifetime_s,
        "access_token": access_token,
    }
    if emu.config.refresh_in_s is not None:
        body["refresh_in"] = int(emu.config.refresh_in_s)
    headers = {
        **_NO_STORE,
        "x-ms-request-id": emu.ids.new(),
        "client-request-id": request.headers.get("client-request-id", ""),
    }
    return _json(200, body, headers)
