"""Prometheus metrics of the API process at GET /metrics.

Two kinds: what this process saw (requests by route and status, their latency) and what the
whole fleet's database says, read at scrape time so that any API replica answers the same: queue
depth by state and the age of the oldest notification still waiting, and when each tenant's
credential in force expires (api/credential_metrics.py). The per-send counters
(outcomes, error codes, Graph latency, tokens, throttling) come from each worker's own /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from api.context import context
from api.credential_metrics import CredentialExpiryCollector
from api.middleware import Handler
from shared.models import ACTIVE_STATES, Notification, State

_N = Notification.__table__  # type: ignore[attr-defined]
WAITING_STATES = (*ACTIVE_STATES, State.SENDING.value)


class QueueCollector(Collector):
    """Queue gauges from the database, refreshed by the scrape handler (never inside collect())."""

    def __init__(self, engine: Engine, max_staleness_s: float = 2.0) -> None:
        self._engine = engine
        self._max_staleness_s = max_staleness_s
        self._read_at = 0.0
        self._depth: dict[str, int] = {}
        self._oldest_age_s = 0.0

    def refresh(self) -> None:
        """Read the queue (blocking; run it in the executor). Scrapes closer than the staleness reuse it."""
        now = time.time()
        if now - self._read_at < self._max_staleness_s:
            return
        with self._engine.connect() as conn:
            rows = conn.execute(select(_N.c.state, func.count()).where(_N.c.state.in_(WAITING_STATES))
                                .group_by(_N.c.state)).all()
            oldest = conn.execute(select(func.min(_N.c.created_at)).where(_N.c.state.in_(WAITING_STATES))).scalar()
        depth = {str(state): int(count) for state, count in rows}
        self._depth = {state: depth.get(state, 0) for state in WAITING_STATES}
        self._oldest_age_s = max(0.0, now - oldest.timestamp()) if oldest is not None else 0.0
        self._read_at = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("tenantmail_queue_depth", "Notifications not yet in a final state, by state",
                                  labels=["state"])
        for state, count in self._depth.items():
            depth.add_metric([state], count)
        yield depth
        yield GaugeMetricFamily("tenantmail_oldest_queued_age_seconds",
                                "Age of the oldest notification not yet in a final state", value=self._oldest_age_s)


class ApiMetrics:
    """The API process's registry."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tenantmail_api_requests", "API requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("tenantmail_api_request_seconds", "API request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
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
