"""Email provider settings of one tenant: view, save after a credential check, revert, history.

A save stores a new version only after Entra ID issued a token for the new credentials (a client
secret or a certificate); any failure leaves the version in force untouched and answers 422 with
the code, cause and fix. Responses never carry a credential: a secret shows its last 4 characters
and expiry, a certificate its SHA-1 thumbprint and notAfter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import exists, select

from api.context import ApiContext
from api.credentials import Credentials, acquire_token
from api.errors import ApiError, not_found
from api.keys import Principal
from api.onboarding import domain_report, remember_enterprise_app
from api.provider_input import ProviderInput, parse_provider
from shared.certificates import CertificateCredential, parse_certificate_pem
from shared.clock import as_utc
from shared.clouds import resolve_cloud
from shared.diagnosis import diagnose
from shared.errors import ConfigurationError, DeliveryError
from shared.events import record_event
from shared.models import Notification, ProviderConfig
from shared.providers import (
    VersionConflict,
    config_version,
    current_config,
    provider_history,
    restore_version,
    save_graph_provider,
    set_platform_default,
)
from shared.senders import senders_of
from transport.graph_apps import READ_APPS_ROLE, expiry_of, secret_dates, token_roles

_N = Notification.__table__  # type: ignore[attr-defined]
READWRITE_ROLE = "Mail.ReadWrite"  # drafts and upload sessions: attachments of 3 MiB or more
_log = structlog.get_logger("tenantmail.api")
# Which form field an Entra ID code points at, so the page can show the error next to it.
_FIELD_BY_CODE = {"AADSTS90002": "azure_tenant", "AADSTS900023": "azure_tenant", "AADSTS700016": "client_id",
                  "AADSTS7000215": "client_secret", "AADSTS7000222": "client_secret",
                  "AADSTS7000218": "client_secret", "AADSTS700027": "certificate_pem",
                  "AuthorityUnreachable": "cloud"}


async def view(ctx: ApiContext, tenant_id: str) -> dict[str, Any]:
    """The configuration in force, its credential reduced to what identifies it and its expiry, and the
    sender domain's SPF, DKIM and DMARC checks (`domain_checks`)."""
    document = await _document(ctx, tenant_id)
    document["domain_checks"] = await domain_report(ctx, document)
    return document


async def _document(ctx: ApiContext, tenant_id: str) -> dict[str, Any]:
    row = await ctx.blocking(current_config, ctx.engine, tenant_id)
    if row is None or row.kind == "platform":
        return {"provider": "platform", "service": "smtp", "version": row.version if row else 0,
                "sender_name": ctx.settings.platform_sender_name, "sender_address": ctx.settings.platform_sender,
                "status": "active" if ctx.settings.smtp_host else "not_configured",
                "updated_at": _iso(row.created_at) if row else None, "updated_by": row.created_by if row else None}
    expiry = {"expires_at": _iso(row.secret_expires_at), "expires_in_days": _days_left(row.secret_expires_at),
              "expiry_source": row.expiry_source if row.secret_expires_at else None}
    certificate = row.credential_type == "certificate"
    return {
        "provider": "customer", "service": "microsoft_graph", "version": row.version,
        "sender_name": row.sender_name, "sender_address": row.sender_address, "reply_to": row.reply_to,
        "azure_tenant": row.azure_tenant, "client_id": row.client_id, "cloud": row.cloud,
        "admin_contact_email": row.admin_contact_email,
        "senders": {name: sender.stored() for name, sender in senders_of(row).items()},
        "daily_external_recipient_limit": row.daily_external_recipient_limit,
        "mail_readwrite": row.mail_readwrite,
        "credential_type": "certificate" if certificate else "secret",
        "client_secret": None if certificate else {"last4": row.secret_last4, **expiry},
        "certificate": {"thumbprint": row.cert_thumbprint, **expiry} if certificate else None,
        "status": await ctx.blocking(_status, ctx, row),
        "updated_at": _iso(row.created_at), "updated_by": row.created_by,
    }


def _status(ctx: ApiContext, row: ProviderConfig) -> str:
    if row.secret_expires_at is not None and as_utc(row.secret_expires_at) <= datetime.now(UTC):
        return "credentials_expired"
    query = select(exists().where(_N.c.tenant_id == row.tenant_id, _N.c.last_error_code == "AADSTS7000222",
                                  _N.c.updated_at >= row.created_at))
    with ctx.engine.connect() as conn:
        return "credentials_expired" if conn.scalar(query) else "active"


async def save(ctx: ApiContext, who: Principal, body: object, *, expected_version: int | None = None) -> dict[str, Any]:
    """Validate, check the credentials with Entra ID, then store a new version (or revert to platform).

    With `expected_version` (If-Match), 412 unless that version is still the one in force.
    """
    form = parse_provider(body)
    if form is None:
        await revert(ctx, who, expected_version=expected_version)
        return await view(ctx, who.tenant_id)
    await _check_version(ctx, who.tenant_id, expected_version)
    secret, certificate = form.client_secret, form.certificate
    expires_at, source = form.secret_expires_at, "entered" if form.secret_expires_at else None
    if secret is None and certificate is None:
        secret, certificate, kept = await ctx.blocking(_stored_credential, ctx, who.tenant_id, form)
        if expires_at is None and kept[0] is not None:
            expires_at, source = kept
    creds = Credentials(form.azure_tenant, form.client_id, resolve_cloud(form.cloud, ctx.settings),
                        certificate.pem if certificate else secret or "",
                        "certificate" if certificate else "secret")
    token = await _checked(ctx, who, creds)
    await remember_enterprise_app(ctx, who.tenant_id, creds, token)
    if secret is not None and expires_at is None:
        expires_at = await _expiry_from_graph(ctx, creds, token, secret)
        source = "graph" if expires_at else None
    version = await _stored(ctx, lambda: save_graph_provider(
        ctx.engine, ctx.box, who.tenant_id, sender_address=form.sender_address, azure_tenant=form.azure_tenant,
        client_id=form.client_id, client_secret=None if certificate else secret, certificate=certificate,
        sender_name=form.sender_name, reply_to=form.reply_to, cloud=form.cloud,
        secret_expires_at=expires_at, expiry_source=source, admin_contact_email=form.admin_contact_email,
        senders=form.senders, daily_external_recipient_limit=form.daily_external_recipient_limit,
        mail_readwrite=READWRITE_ROLE in token_roles(token), created_by=who.actor, expected_version=expected_version))
    _log.info("provider.saved", version=version, client_id=form.client_id, cloud=form.cloud,
              credential_type=creds.credential_type, thumbprint=certificate.thumbprint if certificate else None,
              expiry_source=source)
    await ctx.blocking(lambda: record_event(ctx.engine, who.tenant_id, "provider_saved",
                                            detail=f"version {version}", actor=who.actor))
    return await view(ctx, who.tenant_id)


async def restore(ctx: ApiContext, who: Principal, version: int, *,
                  expected_version: int | None = None) -> dict[str, Any]:
    """Make a copy of an older version the one in force, after the same credential check as a save."""
    source = await ctx.blocking(config_version, ctx.engine, who.tenant_id, version)
    if source is None:
        raise not_found(f"version {version}")
    await _check_version(ctx, who.tenant_id, expected_version)
    readwrite = None
    if source.kind == "graph" and source.secret_enc is not None:
        try:
            credential = ctx.box.decrypt(source.secret_enc)
        except ConfigurationError:
            raise ApiError(422, "version_unusable", f"version {version}: its credential can no longer be "
                           "decrypted (encryption key retired); save the credential again", field="version") from None
        creds = Credentials(source.azure_tenant or "", source.client_id or "",
                            resolve_cloud(source.cloud, ctx.settings), credential, source.credential_type or "secret")
        token = await _checked(ctx, who, creds)
        await remember_enterprise_app(ctx, who.tenant_id, creds, token)
        readwrite = READWRITE_ROLE in token_roles(token)
    new = await _stored(ctx, lambda: restore_version(ctx.engine, ctx.box, source, created_by=who.actor,
                                                     expected_version=expected_version, mail_readwrite=readwrite))
    _log.info("provider.restored", version=new, restored_from=version)
    await ctx.blocking(lambda: record_event(ctx.engine, who.tenant_id, "provider_restored",
                                            detail=f"version {new}: restored version {version}", actor=who.actor))
    return await view(ctx, who.tenant_id)


async def _checked(ctx: ApiContext, who: Principal, creds: Credentials) -> str:
    # The credential check of a save or a restore; a failure is recorded as an event, then answered 422.
    try:
        return await check_credentials(ctx, creds)
    except ApiError as exc:
        code, message = exc.code, exc.message
        await ctx.blocking(lambda: record_event(ctx.engine, who.tenant_id, "provider_check_failed", code=code,
                                                detail=message, actor=who.actor))
        raise


async def _check_version(ctx: ApiContext, tenant_id: str, expected_version: int | None) -> None:
    # Early answer before a token request; the save's transaction checks it again under the tenant's lock.
    if expected_version is None:
        return
    row = await ctx.blocking(current_config, ctx.engine, tenant_id)
    current = row.version if row else 0
    if current != expected_version:
        raise version_conflict(current, expected_version)


async def _stored(ctx: ApiContext, store: Callable[[], int]) -> int:
    try:
        return await ctx.blocking(store)
    except VersionConflict as exc:
        raise version_conflict(exc.current_version, None) from None


def version_conflict(current: int, expected: int | None) -> ApiError:
    """412: another version is in force than the one the caller edited."""
    edited = f" (you edited version {expected})" if expected is not None else ""
    return ApiError(412, "version_conflict", f"version {current} is in force now{edited}: another admin saved "
                    "meanwhile; reload, check their change and apply yours again", field="If-Match",
                    current_version=current)


async def _expiry_from_graph(ctx: ApiContext, creds: Credentials, token: str, secret: str) -> datetime | None:
    # Only when the app may read itself: Application.Read.All among the token's roles.
    if READ_APPS_ROLE not in token_roles(token) or ctx.http is None:
        return None
    listed = await secret_dates(ctx.http, creds.cloud.graph_base, token, creds.client_id)
    return expiry_of(secret, listed, datetime.now(UTC)) if listed is not None else None


def _stored_credential(ctx: ApiContext, tenant_id: str, form: ProviderInput
                       ) -> tuple[str | None, CertificateCredential | None, tuple[datetime | None, str | None]]:
    # An edit that leaves the credential blank keeps the stored one, for the same app in the same tenant,
    # and with it the stored expiry.
    row = current_config(ctx.engine, tenant_id)
    if (row is None or row.secret_enc is None or row.client_id != form.client_id
            or row.azure_tenant != form.azure_tenant):
        raise ApiError(422, "validation_failed", "client_secret: is required (or certificate_pem)",
                       field="client_secret")
    stored = ctx.box.decrypt(row.secret_enc)
    kept = (row.secret_expires_at, "kept" if row.secret_expires_at else None)
    if row.credential_type == "certificate":
        return None, parse_certificate_pem(stored), kept
    return stored, None, kept


async def check_credentials(ctx: ApiContext, creds: Credentials) -> str:
    """A token for `creds`, or 422 naming the Entra ID code with its cause and fix."""
    s = ctx.settings
    try:
        async with asyncio.timeout(s.token_timeout_s + 5):
            return await ctx.blocking(lambda: acquire_token(creds, ca_bundle=s.ca_bundle, timeout_s=s.token_timeout_s))
    except TimeoutError:
        raise credential_error("AuthorityUnreachable", "Entra ID did not answer in time") from None
    except DeliveryError as exc:
        _log.info("provider.check_failed", code=exc.code, client_id=creds.client_id, cloud=creds.cloud.name)
        raise credential_error(exc.code or "TokenError", exc.message) from None


def credential_error(code: str, message: str) -> ApiError:
    """The 422 of a failed credential check: Entra's code, its message, our diagnosis and fix."""
    diagnosis = diagnose(code, message)
    text = f"{code}: {diagnosis.cause if diagnosis else message}"
    return ApiError(422, code, text, field=_FIELD_BY_CODE.get(code), detail=message,
                    diagnosis={"cause": diagnosis.cause, "fix": diagnosis.fix} if diagnosis else None)


async def revert(ctx: ApiContext, who: Principal, *, expected_version: int | None = None) -> int:
    """Switch the tenant back to the platform default provider; returns the new version."""
    await _check_version(ctx, who.tenant_id, expected_version)
    version = await _stored(ctx, lambda: set_platform_default(ctx.engine, who.tenant_id, created_by=who.actor,
                                                               expected_version=expected_version))
    _log.info("provider.reverted", version=version)
    await ctx.blocking(lambda: record_event(ctx.engine, who.tenant_id, "provider_reverted",
                                            detail=f"version {version}: platform default", actor=who.actor))
    return version


async def history(ctx: ApiContext, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's configuration changes, newest first (field names only)."""
    rows = await ctx.blocking(provider_history, ctx.engine, tenant_id)
    return [{"version": r.version, "action": r.action, "changed_fields": r.changed_fields, "actor": r.actor,
             "at": _iso(r.created_at), "restored_from": r.restored_from} for r in rows]


def _days_left(expires_at: datetime | None) -> int | None:
    if expires_at is None:
        return None
    return (as_utc(expires_at) - datetime.now(UTC)).days




def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
