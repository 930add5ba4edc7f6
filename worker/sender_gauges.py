"""`tenantmail_sender_recipients_used{tenant,sender}` and `tenantmail_sender_recipients_remaining{tenant,sender}`:
each named sender's recipients in its rolling 24 h window and what is left of its daily limit (issue 14).

The figures of `GET /v1/email-provider/usage`, read from the fleet-wide counters the quota gate keeps
(transport.quota_windows) at scrape time, at most every `max_staleness_s`, for tenants on their own Graph app.
A counter Redis lost gives no sample until the next batch rebuilds it. Served by each worker's metrics port
(the operators' port), not by the API's public /metrics, whose answers never name another tenant. Labels are
the tenant id and the sender's *name*: at most `shared.senders.MAX_SENDERS` series per tenant, like the
per-tenant credential gauge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared.models import ProviderConfig
from shared.senders import senders_of
from shared.settings import Settings
from transport.quota_windows import sender_windows, usage_of
from transport.redis_errors import redis_boundary

log = structlog.get_logger(__name__)
_P = ProviderConfig.__table__  # type: ignore[attr-defined]


def graph_configs_in_force(engine: Engine) -> list[ProviderConfig]:
    """The configuration in force of every tenant on its own Graph app."""
    latest = (select(_P.c.tenant_id, func.max(_P.c.version).label("v")).where(_P.c.active.is_(True))
              .group_by(_P.c.tenant_id).subquery())
    query = (select(ProviderConfig).join(latest, (_P.c.tenant_id == latest.c.tenant_id) & (_P.c.version == latest.c.v))
             .where(_P.c.kind == "graph").order_by(_P.c.tenant_id))
    with Session(engine) as session:
        return list(session.scalars(query).all())


class SenderUsageCollector(Collector):
    """Two samples per sender; collect() runs on the metrics server's thread and reads there."""

    def __init__(self, engine: Engine, redis_sync: Any, settings: Settings, max_staleness_s: float = 30.0) -> None:
        self._engine, self._redis, self._settings = engine, redis_sync, settings
        self._max_staleness_s = max_staleness_s
        self._read_at = 0.0
        self._samples: list[tuple[str, str, int, int]] = []

    def refresh(self) -> None:
        """Read every sender's recipients counter (one pipelined Redis round trip)."""
        now = time.time()
        if now - self._read_at < self._max_staleness_s:
            return
        senders = [(row.tenant_id, name, sender_windows(
            tenant_id=row.tenant_id, client_id=row.client_id or "", address=sender.address,
            daily_recipient_limit=sender.daily_recipient_limit, daily_external_recipient_limit=None,
            settings=self._settings)[0]) for row in graph_configs_in_force(self._engine)
            for name, sender in senders_of(row).items()]
        with redis_boundary("sender gauges"):
            pipe = self._redis.pipeline(transaction=False)
            for _, _, window in senders:
                pipe.hgetall(window.key)
            counters = pipe.execute()
        now_ms = int(now * 1000)
        samples = []
        for (tenant, name, window), flat in zip(senders, counters, strict=True):
            usage = usage_of(flat, window, now_ms)
            if usage.seeded:
                samples.append((tenant, name, usage.used, max(0, window.limit - usage.used)))
        self._samples, self._read_at = samples, now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            self.refresh()
        except Exception:  # a scrape must answer; the last figures stay
            log.warning("metrics.sender_gauges_failed", exc_info=True)
        used = GaugeMetricFamily("tenantmail_sender_recipients_used",
                                 "Recipients the sender mailbox sent to in its rolling 24 h window",
                                 labels=["tenant", "sender"])
        remaining = GaugeMetricFamily("tenantmail_sender_recipients_remaining",
                                      "Recipients the sender may still send to in its rolling 24 h window",
                                      labels=["tenant", "sender"])
        for tenant, sender, recipients, left in self._samples:
            used.add_metric([tenant, sender], recipients)
            remaining.add_metric([tenant, sender], left)
        yield used
        yield remaining
