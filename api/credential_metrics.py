"""`tenantmail_credential_expires_at_seconds{tenant,credential_type}`: when each tenant's credential in force expires.

Read from the database at scrape time (at most every `max_staleness_s`), like the queue gauges, so
every API replica answers the same. An alert compares it with `time()` (deploy/prometheus/): the
reminders email the tenant's admin, the alert tells the operators.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from shared.reminders import credentials_in_force


class CredentialExpiryCollector(Collector):
    """One sample per tenant whose configuration in force records an expiry (secret or certificate)."""

    def __init__(self, engine: Engine, max_staleness_s: float = 30.0) -> None:
        self._engine = engine
        self._max_staleness_s = max_staleness_s
        self._read_at = 0.0
        self._expiries: list[tuple[str, str, float]] = []

    def refresh(self) -> None:
        """Read the configurations in force (blocking; run it in the executor)."""
        now = time.time()
        if now - self._read_at < self._max_staleness_s:
            return
        self._expiries = [(c.tenant_id, c.credential_type, c.expires_at.timestamp())
                          for c in credentials_in_force(self._engine)]
        self._read_at = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tenantmail_credential_expires_at_seconds",
                                   "Unix time at which the tenant's credential in force expires",
                                   labels=["tenant", "credential_type"])
        for tenant, credential_type, expires_at in self._expiries:
            family.add_metric([tenant, credential_type], expires_at)
        yield family
