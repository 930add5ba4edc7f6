"""Prometheus metrics of the API process at GET /metrics.

Two kinds: what this process saw (requests by route and status, their latency) and what the
whole fleet's database says, read at scrape time so that any API replica answers the same: queue
depth by state and the age of the oldest notification still waiting, and when each tenant's
credential in force expires (api/credential_metrics.py). The per-send counters
(outcomes, error codes, Graph latency, tokens, throttling) come from each worker's own /metrics.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import Engine

from api.context import context
from api.credential_metrics import CredentialExpiryCollector
from api.middleware import Handler
from shared.metrics import QueueCollector


class ApiMetrics:
    """The API process's registry."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tenantmail_api_requests", "API requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tenantmail_api_request_seconds", "API request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.ratelimit_fail_open = Counter(
            "tenantmail_ratelimit_fail_open", "Uses admitted without a rate limit check because Redis did not "
            "answer, by limit", ["limit"], registry=self.registry)
        self.queue = QueueCollector(engine)
        self.registry.register(self.queue)
        self.credentials = CredentialExpiryCollector(engine)
        self.registry.register(self.credentials)


METRICS: web.AppKey[ApiMetrics] = web.AppKey("tenantmail_metrics", ApiMetrics)


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request (outermost: sees the status the error middleware chose)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects and the like, raised past the error middleware
        status = exc.status
        raise
    finally:
        route = _route(request)
        m = request.app[METRICS]
        m.requests.labels(request.method, route, str(status)).inc()
        m.latency.labels(route).observe(time.perf_counter() - started)


def _route(request: web.Request) -> str:
    # The route template, never the raw path: ids in paths would make unbounded label sets.
    resource: Any = request.match_info.route.resource
    return str(resource.canonical) if resource is not None else "unmatched"


async def handler(request: web.Request) -> web.Response:
    """GET /metrics in Prometheus text format."""
    m = request.app[METRICS]
    await context(request).blocking(m.queue.refresh)
    await context(request).blocking(m.credentials.refresh)
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
