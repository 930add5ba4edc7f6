"""The control API under /_emulator/: directory, outbox, log, counters, faults, config, clock, tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from emulator.directory import Directory
from emulator.exchange_cmdlets import run_cmdlet
from emulator.faults import build_fault
from emulator.state import matches
from emulator.tokens import TokenService
from emulator.wire import EMULATOR_KEY

if TYPE_CHECKING:
    from emulator.server import Emulator


def _emu(request: web.Request) -> Emulator:
    return request.app[EMULATOR_KEY]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body, default=str), content_type="application/json")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from None


def _bad(exc: Exception) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=orjson.dumps({"error": str(exc)}).decode(), content_type="application/json"
    )


async def get_directory(request: web.Request) -> web.Response:
    """GET /_emulator/directory."""
    return _json(_emu(request).directory.to_dict())


async def put_directory(request: web.Request) -> web.Response:
    """PUT /_emulator/directory: replace the whole directory."""
    data = await _body(request)
    try:
        _emu(request).directory = Directory(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise _bad(exc) from None
    return _json({"tenants": len(data.get("tenants", []))})


async def put_tenant(request: web.Request) -> web.Response:
    """POST /_emulator/directory/tenants: add or replace one tenant."""
    try:
        tenant = _emu(request).directory.put_tenant(await _body(request))
    except (KeyError, ValueError, TypeError) as exc:
        raise _bad(exc) from None
    return _json({"id": tenant.id})


async def add_certificate(request: web.Request) -> web.Response:
    """POST /_emulator/directory/tenants/{tenant}/apps/{client_id}/certificates {"pem": ...}: register a
    certificate's public part on the app, as an admin uploads it in Certificates & secrets."""
    body = await _body(request)
    pem = body.get("pem") if isinstance(body, dict) else None
    if not isinstance(pem, str):
        raise _bad(ValueError("pem: a PEM certificate is required"))
    try:
        _emu(request).directory.add_certificate(request.match_info["tenant"], request.match_info["client_id"], pem)
    except KeyError as exc:
        raise web.HTTPNotFound(text=orjson.dumps({"error": str(exc)}).decode(),
                               content_type="application/json") from None
    except (ValueError, TypeError) as exc:
        raise _bad(exc) from None
    return _json({"registered": True}, status=201)


async def exchange_cmdlet(request: web.Request) -> web.Response:
    """POST /_emulator/exchange/{tenant}/cmdlet {"cmdlet", "params"}: run an Exchange Online PowerShell
    cmdlet of RBAC for Applications or Access Policies against the directory (emulator.exchange_cmdlets)."""
    emu = _emu(request)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("cmdlet"), str):
        raise _bad(ValueError("cmdlet: a cmdlet name is required"))
    try:
        result = run_cmdlet(emu.directory, request.match_info["tenant"], body["cmdlet"],
                            dict(body.get("params") or {}), emu.clock.now())
    except KeyError as exc:
        raise web.HTTPNotFound(text=orjson.dumps({"error": str(exc)}).decode(),
                               content_type="application/json") from None
    except (ValueError, TypeError) as exc:  # CmdletError is a ValueError
        raise _bad(exc) from None
    return _json({"output": result})


async def get_outbox(request: web.Request) -> web.Response:
    """GET /_emulator/outbox?field=value...: accepted messages, oldest first."""
    filters = dict(request.query)
    return _json([m for m in _emu(request).inspection.outbox if matches(m, filters)])


async def get_mail_items(request: web.Request) -> web.Response:
    """GET /_emulator/mailitems?field=value...: drafts and Sent Items copies left in mailboxes (emulator.drafts)."""
    filters = dict(request.query)
    return _json([d.public() for d in _emu(request).mail.items.values() if matches(d.public(), filters)])


async def get_requests(request: web.Request) -> web.Response:
    """GET /_emulator/requests?field=value...: the masked request log, oldest first."""
    filters = dict(request.query)
    return _json([e for e in list(_emu(request).inspection.log) if matches(e, filters)])


async def get_counters(request: web.Request) -> web.Response:
    """GET /_emulator/counters."""
    emu = _emu(request)
    return _json(emu.inspection.counters.as_dict(emu.limits.max_in_flight))


async def reset(request: web.Request) -> web.Response:
    """POST /_emulator/reset: clear outbox, log, counters, faults, throttle state and clock; keep the "
    "directory."""
    _emu(request).reset()
    return _json({"reset": True})


async def add_fault(request: web.Request) -> web.Response:
    """POST /_emulator/faults: add a fault rule, returns its id."""
    emu = _emu(request)
    try:
        fault = emu.faults.add(build_fault(emu.ids.new(), await _body(request)))
    except (KeyError, ValueError, TypeError) as exc:
        raise _bad(exc) from None
    return _json(fault.public(), status=201)


async def list_faults(request: web.Request) -> web.Response:
    """GET /_emulator/faults."""
    return _json([f.public() for f in _emu(request).faults.rules])


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /_emulator/faults: drop every rule (held requests continue)."""
    _emu(request).faults.clear()
    return _json({"cleared": True})


async def delete_fault(request: web.Request) -> web.Response:
    """DELETE /_emulator/faults/{id}."""
    if not _emu(request).faults.remove(request.match_info["fault_id"]):
        raise web.HTTPNotFound()
    return _json({"deleted": True})


async def release_faults(request: web.Request) -> web.Response:
    """POST /_emulator/faults/release: let requests held by "hold" rules continue."""
    return _json({"released": _emu(request).faults.release()})


async def get_config(request: web.Request) -> web.Response:
    """GET /_emulator/config."""
    config = _emu(request).config
    return _json({k: v for k, v in config.__dict__.items() if k != "directory"})


async def set_config(request: web.Request) -> web.Response:
    """POST /_emulator/config: change run-time settings (see config.MUTABLE_FIELDS)."""
    emu = _emu(request)
    try:
        emu.config = emu.config.updated(await _body(request))
    except (ValueError, TypeError) as exc:
        raise _bad(exc) from None
    return await get_config(request)


async def clock(request: web.Request) -> web.Response:
    """POST /_emulator/clock {"advance_s": n}; GET returns the current emulator time."""
    emu = _emu(request)
    if request.method == "POST":
        body = await _body(request)
        try:
            emu.clock.advance(float(body.get("advance_s", 0)))
        except ValueError as exc:
            raise _bad(exc) from None
    return _json({"now": emu.clock.now(), "offset_s": emu.clock.offset_s})


async def mint_token(request: web.Request) -> web.Response:
    """POST /_emulator/tokens: sign a token with the given claims on top of app-token defaults.

    Extra keys: `expires_in_s` (negative for an already expired token) and `signed_by: "other"`
    (a key Graph does not trust).
    """
    emu = _emu(request)
    body = dict(await _body(request))
    now = int(emu.clock.now())
    expires_in_s = int(body.pop("expires_in_s", emu.config.token_lifetime_s))
    signed_by = body.pop("signed_by", "emulator")
    claims: dict[str, Any] = {
        "aud": "https://graph.microsoft.com",
        "iat": now,
        "nbf": min(now, now + expires_in_s),
        "exp": now + expires_in_s,
        "idtyp": "app",
        "ver": "1.0",
        "uti": emu.ids.new(),
    }
    claims.update(body)
    signer = TokenService() if signed_by == "other" else emu.tokens
    return _json({"access_token": signer.mint(claims), "claims": claims})


async def health(request: web.Request) -> web.Response:
    """GET /_emulator/health."""
    return _json(_emu(request).ready_info())


def add_routes(app: web.Application) -> None:
    """Mount the control API."""
    r = app.router
    r.add_get("/_emulator/health", health)
    r.add_get("/_emulator/directory", get_directory)
    r.add_put("/_emulator/directory", put_directory)
    r.add_post("/_emulator/directory/tenants", put_tenant)
    r.add_post("/_emulator/directory/tenants/{tenant}/apps/{client_id}/certificates", add_certificate)
    r.add_post("/_emulator/exchange/{tenant}/cmdlet", exchange_cmdlet)
    r.add_get("/_emulator/outbox", get_outbox)
    r.add_get("/_emulator/requests", get_requests)
    r.add_get("/_emulator/mailitems", get_mail_items)
    r.add_get("/_emulator/counters", get_counters)
    r.add_post("/_emulator/reset", reset)
    r.add_post("/_emulator/faults/release", release_faults)
    r.add_post("/_emulator/faults", add_fault)
    r.add_get("/_emulator/faults", list_faults)
    r.add_delete("/_emulator/faults", clear_faults)
    r.add_delete("/_emulator/faults/{fault_id}", delete_fault)
    r.add_get("/_emulator/config", get_config)
    r.add_post("/_emulator/config", set_config)
    r.add_route("*", "/_emulator/clock", clock)
    r.add_post("/_emulator/tokens", mint_token)
