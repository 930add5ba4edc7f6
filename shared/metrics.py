"""Prometheus metrics of a worker process, served on `--metrics-port` (GET /metrics).

One registry per process; the collectors are plain objects (no connection, no server) until
`serve()` is called at worker start.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
        self.throttle_blocks = Counter("tenantmail_throttle_blocks", "Mailboxes blocked after a 429",
                                       registry=r)
        self.ambiguous = Counter("tenantmail_ambiguous_outcomes", "Sends whose outcome cannot be known",
                                 registry=r)
        self.retries = Counter("tenantmail_retries", "Notifications rescheduled for another try", registry=r)
        self.notification_latency = Histogram(
            "tenantmail_notification_latency_seconds", "From enqueue to a final outcome written (sent, failed, "
            "ambiguous)", buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=r)
        self.token_errors = Counter("tenantmail_token_errors", "Token requests Entra ID refused or that failed, by "
                                    "code (AADSTS<n>, or the transient error's code)", ["code"], registry=r)
        self.dispatcher_leader = Gauge("tenantmail_dispatcher_leader", "1 while this process's dispatcher holds "
                                       "the fleet-wide leader lease", registry=r)
        self.worker_live = Gauge("tenantmail_worker_live", "1 while this worker is live (its event loop answers "
                                 "and its batches make progress), as `tenantmail health worker` judges", registry=r)
        self.queue_depth = Gauge("tenantmail_queue_depth", "Notifications queued or waiting to retry",
                                 registry=r)
        self.oldest_queued_age = Gauge("tenantmail_oldest_queued_age_seconds",
                                       "Age of the oldest notification not yet in a final state", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)


metrics = Metrics()
