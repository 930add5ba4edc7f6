"""Graph route: POST /v1.0/users/{id | userPrincipalName}/sendMail.

Order of checks (reference §6): bearer token (401) -> Mail.Send role (403) -> access policy (403 RAOP)
-> mailbox exists / enabled (404) -> request size (413) -> JSON (400) -> recipients, headers, message
size (400) -> `from` permission (403 ErrorSendAsDenied) -> per (app, mailbox) limits (429) -> faults
and latency, while the request counts as in flight -> commit to the outbox -> 202.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from emulator import exchange
from emulator.directory import Mailbox, Tenant
from emulator.graph_errors import base_headers, graph_error
from emulator.message_checks import MessageProblem, check_message
from emulator.wire import EMULATOR_KEY, NOTE_KEY, abort_connection, wait_for_fault

if TYPE_CHECKING:
    from emulator.faults import Fault
    from emulator.server import Emulator

_TOKEN_PROBLEMS = {
    "empty": "token_empty",
    "malformed": "token_malformed",
    "invalid": "token_invalid",
    "audience": "token_audience",
    "expired": "token_expired",
}
_FAULT_PROBLEMS = {
    "429": "too_many_requests",
    "503": "service_unavailable",
    "500": "internal_error",
    "504": "gateway_timeout",
    "504_after_commit": "gateway_timeout",
    "status": "internal_error",
}


class GraphReply(Exception):
    """Raised to answer with a catalogue error."""

    def __init__(self, problem: str, **fields: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fields = fields


async def send_mail(request: web.Request) -> web.Response:
    """Handle one sendMail call."""
    emu: Emulator = request.app[EMULATOR_KEY]
    note = request[NOTE_KEY]
    request_id = emu.ids.new()
    client_request_id = request.headers.get("client-request-id") or request_id
    note.update(request_id=request_id, client_request_id=client_request_id)
    emu.inspection.counters.send_requests += 1
    note["sent_at"] = emu.sent_at(request)
    try:
        return await _send_mail(emu, request, request_id, client_request_id)
    except GraphReply as reply:
        emu.inspection.counters.send_errors[reply.problem] += 1
        return graph_error(
            reply.problem,
            request_id=request_id,
            client_request_id=client_request_id,
            now=emu.clock.now(),
            **reply.fields,
        )


async def _send_mail(
    emu: Emulator, request: web.Request, request_id: str, client_request_id: str
) -> web.Response:
    tenant, box, app_id = caller(emu, request, authorize_send)
    record = await _validated_record(emu, request, tenant, box)
    return await _admit_and_commit(emu, request, tenant, box, app_id, record, request_id, client_request_id)


Authorizer = Callable[["Emulator", list[str], Tenant | None, str, Mailbox | None], None]


def caller(emu: Emulator, request: web.Request, authorize: Authorizer) -> tuple[Tenant, Mailbox, str]:
    """The tenant, mailbox and app id of a Graph request on /users/{user}/…, checked in the reference's
    order: token (401), permission (`authorize`: 403), Access Policy (403 RAOP), mailbox (404)."""
    check = emu.tokens.check(request.headers.get("Authorization"), emu.clock.now())
    if check.problem is not None:
        raise GraphReply(_TOKEN_PROBLEMS[check.problem])
    claims = check.claims or {}
    app_id = str(claims.get("appid") or claims.get("azp") or "").lower()
    note = request[NOTE_KEY]
    note.update(tenant=claims.get("tid"), app_id=app_id)
    tenant = emu.directory.tenant(str(claims.get("tid", "")))
    user = request.match_info["user"]
    box = tenant.mailbox(user) if tenant is not None else None
    address = box.address if box is not None else user.lower()
    note["mailbox"] = address
    authorize(emu, list(claims.get("roles") or ()), tenant, app_id, box)
    if tenant is not None and not tenant.policy_allows(app_id, address):
        raise GraphReply("access_policy")
    if tenant is None or box is None:
        raise GraphReply("invalid_user", user=user)
    if not box.licensed or box.on_premises:
        raise GraphReply("mailbox_not_enabled")
    return tenant, box, app_id


def authorize_send(emu: Emulator, roles: list[str], tenant: Tenant | None, app_id: str, box: Mailbox | None) -> None:
    """Mail.Send: sendMail and a draft's send."""
    # Entra's Mail.Send (tenant-wide) or an Exchange RBAC for Applications grant over this mailbox: a union.
    if "Mail.Send" in roles:
        return
    decision = "none"
    if tenant is not None and box is not None:
        decision = exchange.decide(tenant, tenant.apps.get(app_id), box, emu.clock.now(), emu.config.rbac_propagation_s)
    if decision == "granted":
        return
    c = emu.config
    if decision == "none" and not roles and c.no_permissions_in_token:
        raise GraphReply("no_permissions")
    if decision == "none":
        raise GraphReply("access_denied")
    raise GraphReply("access_denied", status=c.rbac_denied_status, code=c.rbac_denied_code,
                     message=c.rbac_denied_message)


async def _validated_record(
    emu: Emulator, request: web.Request, tenant: Tenant, box: Mailbox
) -> dict[str, Any]:
    limit = emu.config.max_request_bytes
    if (request.content_length or 0) > limit:
        raise GraphReply("request_too_large", status=emu.config.request_too_large_status)
    raw = await request.read()
    if len(raw) > limit:
        raise GraphReply("request_too_large", status=emu.config.request_too_large_status)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GraphReply("bad_json") from None
    try:
        checked = check_message(body, emu.config.max_internet_headers)
    except MessageProblem as problem:
        raise GraphReply(problem.problem, **problem.fields) from None
    if len(raw) > box.max_send_size_bytes:
        raise GraphReply("message_too_big")
    if checked.from_address and not tenant.may_send_as(box, checked.from_address):
        raise GraphReply("send_as_denied")
    return {
        "message": checked.message,
        "save_to_sent_items": checked.save_to_sent_items,
        "x_headers": checked.x_headers,
        "recipients": len({a.lower() for a in checked.recipients}),  # Exchange counts each once
        "recipient_addresses": checked.recipients,
        "from": checked.from_address or box.address,
        "size_bytes": len(raw),
    }


async def _admit_and_commit(
    emu: Emulator,
    request: web.Request,
    tenant: Tenant,
    box: Mailbox,
    app_id: str,
    record: dict[str, Any],
    request_id: str,
    client_request_id: str,
) -> web.Response:
    key = (app_id, box.address)
    limits = emu.limits
    counters = emu.inspection.counters
    inside = limits.inside_retry_after(key, request[NOTE_KEY].get("sent_at"))
    if inside == "violation":
        counters.requests_inside_retry_after += 1
        request[NOTE_KEY]["inside_retry_after"] = True
    elif inside == "in_flight":
        counters.requests_in_flight_at_429 += 1
    refused = limits.enter(key)
    if refused is not None:
        problem, retry_after = refused
        return _throttled(emu, key, problem, retry_after, request_id, client_request_id)
    try:
        hit = emu.faults.match(
            "sendMail",
            {tenant.id, *tenant.domains},
            {box.address, box.id, request.match_info["user"].lower()},
            app_id,
        )
        await wait_for_fault(hit, emu.config.latency_ms / 1000.0)
        fault = hit.fault
        if fault is None:
            commit(emu, tenant, box, app_id, record, request_id, client_request_id)
            counters.accepted += 1
            return web.Response(status=202, headers=base_headers(request_id, client_request_id))
        return _faulted(emu, request, fault, tenant, box, app_id, record, request_id, client_request_id)
    finally:
        limits.leave(key)


def _throttled(
    emu: Emulator,
    key: tuple[str, str],
    problem: str,
    retry_after: str | None,
    request_id: str,
    client_request_id: str,
) -> web.Response:
    counters = emu.inspection.counters
    counters.throttled_429 += 1
    counters.throttled_by_reason[problem] += 1
    emu.limits.note_retry_after(key, retry_after)
    return graph_error(
        problem,
        request_id=request_id,
        client_request_id=client_request_id,
        now=emu.clock.now(),
        retry_after=retry_after,
    )


def _faulted(
    emu: Emulator,
    request: web.Request,
    fault: Fault,
    tenant: Tenant,
    box: Mailbox,
    app_id: str,
    record: dict[str, Any],
    request_id: str,
    client_request_id: str,
) -> web.Response:
    counters = emu.inspection.counters
    counters.faults_injected += 1
    if fault.kind.endswith("after_commit"):
        commit(emu, tenant, box, app_id, record, request_id, client_request_id)
        counters.accepted += 1
    if fault.kind.startswith("reset"):
        counters.reset_connections += 1
        return abort_connection(request)
    problem = _FAULT_PROBLEMS[fault.kind]
    retry_after = fault.retry_after if fault.kind == "429" else None
    if fault.kind == "429":
        counters.throttled_429 += 1
        counters.throttled_by_reason["fault"] += 1
        emu.limits.note_retry_after((app_id, box.address), retry_after)
    return graph_error(
        problem,
        request_id=request_id,
        client_request_id=client_request_id,
        now=emu.clock.now(),
        status=fault.status,
        code=fault.code,
        message=fault.message,
        retry_after=retry_after,
        html=fault.body == "html",
        user=box.address,
    )


def commit(
    emu: Emulator,
    tenant: Tenant,
    box: Mailbox,
    app_id: str,
    record: dict[str, Any],
    request_id: str,
    client_request_id: str,
) -> None:
    """Accept a message into the outbox, counting its recipients against Exchange's limits."""
    now = emu.clock.now()
    distinct = {a.lower() for a in record["recipient_addresses"]}
    external = sum(1 for a in distinct if a.rsplit("@", 1)[-1] not in tenant.domains)
    over_mailbox = emu.limits.add_recipients(box.address, record["recipients"])
    over_tenant = emu.limits.add_external(tenant.id, external)
    would_bounce = over_mailbox or over_tenant
    if would_bounce:
        emu.inspection.counters.would_bounce += 1
    # The NDR Exchange would send: 5.7.233 for the tenant's external limit (reference); the mailbox
    # limit's exact code is not documented there, so it is named, not numbered.
    ndr = "550 5.7.233" if over_tenant else ("RecipientRateLimitExceeded" if over_mailbox else None)
    emu.inspection.outbox.append(
        {
            "request_id": request_id,
            "client_request_id": client_request_id,
            "tenant_id": tenant.id,
            "app_id": app_id,
            "mailbox": box.address,
            "received_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z"),
            "received_at_epoch_s": now,
            "would_bounce": would_bounce,
            "ndr": ndr,
            **record,
        }
    )
