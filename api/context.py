"""What every request handler shares: settings, database, Redis, secret box, HTTP session, executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import Counter
from sqlalchemy import Engine

from api.errors import ApiError
from api.keys import ALL_TENANTS, Principal
from shared.errors import ValidationFailed
from shared.producer import Producer
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.dns_records import DnsLookup
from transport.domain_checks import DomainCheckCache

T = TypeVar("T")


@dataclass
class ApiContext:
    """Built by `create_app`; `http` exists between the app's startup and cleanup."""

    settings: Settings
    engine: Engine
    box: SecretBox
    redis: Any
    executor: ThreadPoolExecutor
    producer: Producer
    dns: DnsLookup
    domain_cache: DomainCheckCache
    ratelimit_fail_open: Counter | None = None  # the API registry's counter (api.metrics)
    http: aiohttp.ClientSession | None = None

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (SQLAlchemy, MSAL) in the executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("tenantmail_context", ApiContext)
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("tenantmail_principal", Principal)


def context(request: web.Request) -> ApiContext:
    """The app's context."""
    return request.app[CONTEXT]


def principal(request: web.Request, permission: str = "read") -> Principal:
    """The authenticated caller, after checking its role grants `permission` (403 otherwise)."""
    who: Principal | None = request.get(PRINCIPAL_KEY)
    if who is None:
        raise ApiError(401, "unauthenticated", "an API key is required (Authorization: Bearer tm_…)")
    if not who.may(permission):
        raise ApiError(403, "forbidden", f"the {who.role} role may not do this ({permission} needed)")
    if who.tenant_id == ALL_TENANTS and permission != "platform":  # a platform viewer naming no tenant
        raise ValidationFailed("X-Tenant-Id", "is required with a platform_viewer key, except for the "
                                              "cross-tenant time series")
    return who
