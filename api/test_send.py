"""Send test: one message through the tenant's provider in force, answered synchronously.

The result is `sent` with Graph's request-id (or, on the platform default, the SMTP relay's reply
and the Message-ID), or `failed` with the code and its diagnosis (ErrorAccessDenied "[RAOP]" →
outside the Application Access Policy, SMTP550 → the relay refused it, and so on). Rate-limited
per tenant so the endpoint cannot be used as a relay. `sender` picks one of the tenant's named
senders (default: `default`), so each can be checked on its own.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from api import ratelimit
from api.context import ApiContext
from api.credentials import Credentials, acquire_token
from api.keys import Principal
from shared.access_diagnosis import access_diagnosis, consent_notice
from shared.diagnosis import Diagnosis, diagnose
from shared.errors import DeliveryError, ProviderError, ValidationFailed
from shared.events import record_event
from shared.ids import new_id
from shared.message import Message, check_address, graph_request_body, parse_message
from shared.mime import smtp_envelope
from shared.providers import PlatformProvider, ProviderResolver, ResolvedProvider, current_config
from shared.senders import DEFAULT_SENDER, check_sender_name
from transport.graph import GraphClient
from transport.graph_apps import token_roles
from transport.smtp import SmtpRelayClient

_log = structlog.get_logger("tenantmail.api")
SUBJECT = "tenantmail test message"


async def send_test(ctx: ApiContext, who: Principal, body: object) -> dict[str, Any]:
    """Validate the address, count the use, then send and report the outcome."""
    if not isinstance(body, dict):
        raise ValidationFailed("body", "must be a JSON object")
    to = check_address(body.get("to"), "to")
    name = DEFAULT_SENDER if body.get("sender") in (None, "") else check_sender_name(body["sender"], "sender")
    resolver = ProviderResolver(ctx.engine, ctx.box, ctx.settings)
    resolved = (await ctx.blocking(resolver.resolve_many, [who.tenant_id]))[who.tenant_id]
    provider = resolved if isinstance(resolved, ProviderError) else _named(resolved, name)
    await ratelimit.hit(ctx.redis, "test_send", who.tenant_id, limit=ctx.settings.api_test_sends_per_minute)
    if isinstance(provider, ProviderError):
        return _failed("NoProviderConfigured", str(provider))
    try:
        async with asyncio.timeout(ctx.settings.api_test_send_timeout_s):
            if isinstance(provider, PlatformProvider):
                outcome = await _send_smtp(ctx, provider, to)
            else:
                outcome = await _send(ctx, provider, to)
    except TimeoutError:
        outcome = _failed("Timeout", "no answer before the test send timeout")
    except DeliveryError as exc:
        smtp_status = exc.status if isinstance(provider, PlatformProvider) else None
        outcome = _failed(exc.code or "DeliveryError", exc.message, request_id=exc.request_id,
                          smtp_status=smtp_status)
    outcome.update(sender=provider.sender_address, named_sender=name,
                   provider="platform" if provider.kind == "platform" else "customer")
    await ctx.blocking(lambda: record_event(
        ctx.engine, who.tenant_id, "test_sent" if outcome["result"] == "sent" else "test_failed",
        code=outcome.get("code"), request_id=outcome.get("request_id"),
        detail=f"to {to} from {provider.sender_address}", actor=who.actor))
    _log.info("provider.test_send", result=outcome["result"], code=outcome.get("code"),
              request_id=outcome.get("request_id"))
    return outcome


def _named(provider: ResolvedProvider | PlatformProvider, name: str) -> ResolvedProvider | PlatformProvider:
    named = provider.for_sender(name)
    if named is None or (isinstance(named, PlatformProvider) and name != DEFAULT_SENDER):
        raise ValidationFailed("sender", f"the tenant has no sender named {name!r}")
    return named


def _test_message(to: str) -> Message:
    return parse_message({"to": [to], "subject": SUBJECT, "body_type": "text",
                          "body": "This test message confirms tenantmail can send through your provider."})


async def _send_smtp(ctx: ApiContext, provider: PlatformProvider, to: str) -> dict[str, Any]:
    envelope = smtp_envelope(_test_message(to), sender_address=provider.sender_address,
                             sender_name=provider.sender_name, reply_to=None, notification_id=f"test-{new_id()}")
    relay = SmtpRelayClient(ctx.settings, pool_size=1)
    try:
        result = await relay.send(envelope)
    finally:
        await relay.close()
    return {"result": "sent", "request_id": result.message[:64], "message_id": result.message_id,
            "smtp_status": result.code}


async def _send(ctx: ApiContext, provider: ResolvedProvider, to: str) -> dict[str, Any]:
    s = ctx.settings
    creds = Credentials(provider.azure_tenant, provider.client_id, provider.cloud, provider.credential,
                        provider.credential_type)
    token = await ctx.blocking(lambda: acquire_token(creds, ca_bundle=s.ca_bundle, timeout_s=s.token_timeout_s))
    message = _test_message(to)
    body = graph_request_body(message, sender_address=provider.sender_address, sender_name=provider.sender_name,
                              reply_to=provider.reply_to, notification_id=f"test-{new_id()}", checked=True)
    assert ctx.http is not None
    response = await GraphClient(ctx.http).send_mail(provider.cloud.graph_base, token, provider.sender_address,
                                                     body, str(uuid.uuid4()))
    roles = token_roles(token)
    notice = consent_notice(roles)
    extra = {"notice": {"cause": notice.cause, "fix": notice.fix}} if notice else {}
    if response.status == 202:
        return {"result": "sent", "request_id": response.request_id,
                "client_request_id": response.client_request_id, **extra}
    code = response.code or f"HTTP{response.status}"
    row = await ctx.blocking(current_config, ctx.engine, provider.tenant_id)
    saved_at = row.created_at if row is not None else None
    age_s = (datetime.now(UTC) - (saved_at if saved_at.tzinfo else saved_at.replace(tzinfo=UTC))).total_seconds() \
        if saved_at else None
    diagnosis = access_diagnosis(code, response.message, token_roles=roles, config_age_s=age_s)
    return {**_failed(code, response.message or "", status=response.status, request_id=response.request_id,
                      diagnosis=diagnosis), **extra}


def _failed(code: str, message: str, *, status: int | None = None, request_id: str | None = None,
            smtp_status: int | None = None, diagnosis: Diagnosis | None = None) -> dict[str, Any]:
    diagnosis = diagnosis or diagnose(code, message)
    out = {"result": "failed", "code": code, "message": message, "http_status": status, "request_id": request_id,
           "diagnosis": {"cause": diagnosis.cause, "fix": diagnosis.fix} if diagnosis else None}
    if smtp_status is not None:
        out["smtp_status"] = smtp_status
    return out
