"""Prometheus metrics of a process: a worker's registry, served on `--metrics-port` (GET /metrics), and the
queue gauges that workers and the API both export.

One registry per process; the collectors are plain objects (no connection, no server) until
`serve()` is called at worker start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from shared.models import ACTIVE_STATES, Notification, State

_N = Notification.__table__  # type: ignore[attr-defined]
WAITING_STATES = (*ACTIVE_STATES, State.SENDING.value)


class QueueCollector(Collector):
    """The queue gauges, the one definition of them: read from the database, so every process that
    exports them (the API, each worker) answers the same for the whole fleet.

    The API refreshes them in its scrape handler, off the event loop; a worker's metrics server runs
    collect() on a thread of its own, so there `refresh_on_collect` reads the database in collect().
    """

    def __init__(self, engine: Engine, max_staleness_s: float = 2.0, *, refresh_on_collect: bool = False) -> None:
        self._engine = engine
        self._max_staleness_s = max_staleness_s
        self._refresh_on_collect = refresh_on_collect
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
        if self._refresh_on_collect:
            self.refresh()
        depth = GaugeMetricFamily("tenantmail_queue_depth", "Notifications not yet in a final state, by state",
                                  labels=["state"])
        for state, count in self._depth.items():
            depth.add_metric([state], count)
        yield depth
        yield GaugeMetricFamily("tenantmail_oldest_queued_age_seconds",
                                "Age of the oldest notification not yet in a final state", value=self._oldest_age_s)


class Metrics:
    """The counters, histograms and gauges tenantmail exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sends = Counter("tenantmail_graph_sends", "Graph sendMail calls by outcome and service error code",
                             ["outcome", "code"], registry=r)
        self.smtp_sends = Counter("tenantmail_smtp_sends", "SMTP relay transactions (platform default) by outcome "
                                  "and reply code", ["outcome", "code"], registry=r)
        self.notifications = Counter("tenantmail_notifications", "Notification outcomes recorded, by new state",
                                     ["state"], registry=r)
        self.graph_latency = Histogram("tenantmail_graph_latency_seconds", "Latency of Graph sendMail calls",
                                       buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30), registry=r)
        self.token_lookups = Counter("tenantmail_token_lookups", "Token lookups by where they were answered",
                                     ["source"], registry=r)
        self.upload_bytes = Counter("tenantmail_upload_bytes", "Attachment bytes Graph accepted into upload "
                                    "sessions (large attachments)", registry=r)
        self.throttle_blocks = Counter("tenantmail_throttle_blocks", "Mailboxes blocked after a 429",
                                       registry=r)
        self.throttle_withheld = Counter(
            "tenantmail_throttle_withheld", "sendMail requests stopped once connected: their mailbox was blocked "
            "by a 429 meanwhile (transport.send_gate)", registry=r)
        self.ambiguous = Counter("tenantmail_ambiguous_outcomes", "Sends whose outcome cannot be known",
                                 registry=r)
        self.retries = Counter("tenantmail_retries", "Notifications rescheduled for another try", registry=r)
        self.notification_latency = Histogram(
            "tenantmail_notification_latency_seconds", "From enqueue to a final outcome written (sent, failed, "
            "ambiguous)", buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r)
        self.token_errors = Counter("tenantmail_token_errors", "Token requests Entra ID refused or that failed, by "
                                    "code (AADSTS<n>, or the transient error's code)", ["code"], registry=r)
        self.breaker_transitions = Counter("tenantmail_breaker_transitions", "Circuit breakers opened or closed "
                                           "(ramping up), by scope kind (graph, entra, mailbox, relay)",
                                           ["scope_kind", "to"], registry=r)
        self.breaker_probes = Counter("tenantmail_breaker_probes", "Probe rows let through an open circuit "
                                      "breaker, by scope kind", ["scope_kind"], registry=r)
        self.breaker_requeued = Counter("tenantmail_breaker_requeued", "Rows a worker sent back to the database "
                                        "without an attempt because their breaker was open, by wait reason",
                                        ["reason"], registry=r)
        self.dispatcher_leader = Gauge("tenantmail_dispatcher_leader", "1 while this process's dispatcher holds "
                                       "the fleet-wide leader lease", registry=r)
        self.worker_live = Gauge("tenantmail_worker_live", "1 while this worker is live (its event loop answers "
                                 "and its batches make progress), as `tenantmail health worker` judges", registry=r)

    def serve(self, port: int, engine: Engine, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on a daemon thread, the queue gauges read from `engine` at scrape time."""
        self.registry.register(QueueCollector(engine, refresh_on_collect=True))
        start_http_server(port, addr=addr, registry=self.registry)


metrics = Metrics()
