"""The aiohttp application: `create_app(settings, engine, ...)` and `run_api` for `tenantmail api`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import Engine

from api import (
    activity_export,
    metrics,
    middleware,
    openapi,
    page_activity,
    page_layout,
    routes_activity,
    routes_keys,
    routes_notifications,
    routes_provider,
    routes_stats,
    routes_webhooks,
    security,
    web_page,
    web_webhooks,
)
from api.context import CONTEXT, ApiContext
from shared.db import migrations_current
from shared.errors import ConfigurationError
from shared.producer import Producer
from shared.redis_client import async_client
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.dns_records import DnsLookup
from transport.domain_checks import DomainCheckCache


def create_app(
    settings: Settings, engine: Engine, *, box: SecretBox | None = None, redis: Any = None
) -> web.Application:
    """Build the app; Redis (from settings.redis_url unless given) and the HTTP session open on startup."""
    if redis is None:
        if not settings.redis_url:
            raise ConfigurationError("REDIS_URL is required by the API (rate limits)")
        # Short timeouts and one retry: a producer's request waits little for a Redis that is gone.
        redis = async_client(settings.redis_url, timeout_s=2.0, retries=1)
    security.hide_server_version()
    api_metrics = metrics.ApiMetrics(engine)
    ctx = ApiContext(settings=settings, engine=engine, box=box or SecretBox.from_settings(settings), redis=redis,
                     executor=ThreadPoolExecutor(max_workers=16, thread_name_prefix="tm-api"),
                     producer=Producer(engine, settings), dns=DnsLookup(settings),
                     domain_cache=DomainCheckCache(settings.domain_check_cache_s),
                     ratelimit_fail_open=api_metrics.ratelimit_fail_open)
    # security.headers is outermost: every answer, errors and redirects included, carries the headers.
    app = web.Application(middlewares=[security.headers, metrics.measure, middleware.errors, middleware.auth,
                                       security.csrf, middleware.known_query],
                          client_max_size=settings.api_max_body_bytes,
                          # The setup guide takes up to 10 `sender` addresses in its query: a request line
                          # longer than aiohttp's 8190 bytes must reach our validation (422), not a plain 400.
                          handler_args={"max_line_size": 65536})
    app[CONTEXT] = ctx
    app[metrics.METRICS] = api_metrics
    for table in (routes_provider.routes, routes_activity.routes, routes_notifications.routes, web_page.routes,
                  page_layout.routes):
        app.add_routes(table)
    for table in (routes_webhooks.routes, routes_keys.routes, web_webhooks.routes,  # issue 16
                  routes_stats.routes, activity_export.routes, page_activity.routes):
        app.add_routes(table)
    app.router.add_get("/v1/openapi.json", openapi.handler)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", metrics.handler)
    app.cleanup_ctx.append(_http_session)
    return app


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _ready(request: web.Request) -> web.Response:
    """Ready when the database answers at the newest migration and Redis answers."""
    ctx = request.app[CONTEXT]
    checks: dict[str, str] = {}
    try:
        current = await asyncio.get_running_loop().run_in_executor(ctx.executor, migrations_current, ctx.engine)
        checks["database"] = "ok" if current else "migrations behind: run `tenantmail migrate`"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        await ctx.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT]
    s = ctx.settings
    ssl_ctx = ssl.create_default_context(cafile=s.ca_bundle) if s.ca_bundle else ssl.create_default_context()
    ctx.http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=64),
        timeout=aiohttp.ClientTimeout(total=s.http_timeout_s, sock_connect=s.http_connect_timeout_s),
        trust_env=False,
    )
    yield
    await ctx.http.close()
    await ctx.redis.aclose()
    ctx.executor.shutdown(wait=False, cancel_futures=True)


def run_api(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the API until interrupted (`tenantmail api`)."""
    from shared.db import make_engine

    engine = make_engine(settings)
    web.run_app(create_app(settings, engine), host=host or settings.api_host, port=port or settings.api_port,
                print=None)
