"""`tenantmail doctor`: check configuration, database, migrations, Redis, the platform default's SMTP
relay and a tenant's provider, and say what to fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, text

from shared.db import database_url, make_engine, migrations_current
from shared.diagnosis import diagnose
from shared.errors import ConfigurationError, DeliveryError, ProviderError, TenantmailError
from shared.providers import PlatformProvider, Provider, ProviderResolver, ResolvedProvider
from shared.redis_client import async_client, describe, sync_client
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.dns_records import DnsLookup
from transport.domain_checks import check_domain

_DOCTOR_STATUS = {"pass": "ok", "warn": "warn", "fail": "fail"}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report."""

    status: str  # "ok" | "warn" | "fail"
    what: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"{self.status.upper():4}  {self.what}"
        return f"{line}\n      fix: {self.fix}" if self.fix else line


def run_checks(settings: Settings, tenant: str | None = None) -> list[Check]:
    """Every check, in order; a failing dependency skips the checks that need it."""
    checks: list[Check] = []
    box = _guard(checks, "encryption keys", lambda: SecretBox.from_settings(settings))
    engine = make_engine(settings)
    try:
        db_ok = _guard(checks, f"database {_safe_url(database_url(settings))}", lambda: _ping_db(engine))
        if db_ok:
            current = migrations_current(engine)
            checks.append(Check("ok", "migrations current") if current else
                          Check("fail", "database schema is behind the code", "run `tenantmail migrate`"))
        checks += _redis_checks(settings)
        checks.append(_smtp_check(settings))
        if tenant and db_ok and isinstance(box, SecretBox):
            provider = ProviderResolver(engine, box, settings).resolve_many([tenant])[tenant]
            checks.append(_tenant_check(settings, box, tenant, provider))
            if not isinstance(provider, ProviderError):
                checks += _domain_checks(settings, tenant, provider)
    finally:
        engine.dispose()
    return checks


def _ping_db(engine: Engine) -> bool:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return True


def _guard(checks: list[Check], what: str, fn: Callable[[], object]) -> object | None:
    try:
        value = fn()
    except ConfigurationError as exc:
        checks.append(Check("fail", f"{what}: {exc}", "see docs/operations.md"))
        return None
    except Exception as exc:
        checks.append(Check("fail", f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                            "check the URL, that the server runs and that this host may connect"))
        return None
    checks.append(Check("ok", what))
    return value


def _redis_checks(settings: Settings) -> list[Check]:
    if not settings.redis_url:
        return [Check("fail", "REDIS_URL is not set", "set REDIS_URL (workers need Redis for tokens and throttles)")]
    where = describe(settings.redis_url)
    client = sync_client(settings.redis_url, timeout_s=5, retries=1)
    try:
        client.ping()
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "?")
    except redis.RedisError as exc:
        return [Check("fail", f"redis {where}: {exc}", "start Redis or fix REDIS_URL")]
    finally:
        client.close()
    out = [Check("ok", f"redis {where}")]
    if policy != "noeviction":
        out.append(Check("warn", f"redis maxmemory-policy is {policy}",
                         "set maxmemory-policy noeviction: evicted slots or blocks would break Graph's limits"))
    return out


def _smtp_check(settings: Settings) -> Check:
    from transport.smtp import SmtpRelayClient  # the worker's own client, so the check is the real one

    if not settings.smtp_host:
        return Check("warn", "platform default provider not configured (no SMTP relay)",
                     "set TENANTMAIL_SMTP_HOST (and _SMTP_PORT, _SMTP_SECURITY, _SMTP_USERNAME, _SMTP_PASSWORD), "
                     "or give every tenant its own provider")
    where = f"SMTP relay {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security})"

    async def connect() -> None:
        relay = SmtpRelayClient(settings, pool_size=1)
        await relay.check()

    try:
        asyncio.run(connect())
    except DeliveryError as exc:
        d = diagnose(exc.code, exc.message)
        return Check("fail", f"{where}: {exc}", d.fix if d else "check the relay's host, port and TLS mode")
    return Check("ok", where)


def _domain_checks(settings: Settings, tenant: str, provider: Provider) -> list[Check]:
    """SPF, DKIM and DMARC of the tenant's sender domain, as the API shows them (no cache here)."""
    via_graph = not isinstance(provider, PlatformProvider)
    cloud = provider.cloud.name if isinstance(provider, ResolvedProvider) else "global"
    report = check_domain(DnsLookup(settings), provider.sender_address, via_graph=via_graph, cloud=cloud,
                          relay_include=settings.platform_spf_include)
    return [Check(_DOCTOR_STATUS[r["status"]], f"tenant {tenant}: {r['check'].upper()} of {report['domain']}: "
                  f"{r['message']}", r["fix"] or "") for r in report["results"]]


def _tenant_check(settings: Settings, box: SecretBox, tenant: str, provider: Provider | ProviderError) -> Check:
    from transport.tokens import TokenProvider  # the worker's own token path, so the check is the real one

    if isinstance(provider, ProviderError):
        return Check("fail", f"tenant {tenant}: {provider}", "configure the tenant's email provider")
    if isinstance(provider, PlatformProvider):
        return Check("ok", f"tenant {tenant}: uses the platform default, {provider.sender_address} via the SMTP relay")

    async def acquire() -> None:
        r = async_client(settings.redis_url or "")
        s = sync_client(settings.redis_url or "")
        try:
            with ThreadPoolExecutor(1) as ex:
                tokens = TokenProvider(r, s, box, settings, ex)
                await tokens.get(provider)
        finally:
            await r.aclose()
            s.close()

    try:
        asyncio.run(acquire())
    except DeliveryError as exc:
        d = diagnose(exc.code, exc.message)
        return Check("fail", f"tenant {tenant}: no token ({exc.code}): {d.cause if d else exc.message}",
                     d.fix if d else "")
    except TenantmailError as exc:
        return Check("fail", f"tenant {tenant}: {exc}")
    return Check("ok", f"tenant {tenant}: token acquired for {provider.client_id} as {provider.sender_address}")


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"
