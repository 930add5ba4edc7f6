"""The webhook delivery loop: every worker process runs one on its own thread and event loop.

No leader: deliveries are claimed by lease (worker.webhook_store), so the loops of all workers share
the work and one that dies only delays its claimed deliveries by a lease. Each round claims due
deliveries, sends them concurrently (transport.webhooks: signed, guarded, bounded), and records each
attempt in its own transaction.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from celery import signals
from sqlalchemy import Engine

from shared.db import make_engine
from shared.secretbox import SecretBox
from shared.settings import Settings
from shared.webhooks import body_bytes, signed_headers
from transport.webhooks import new_session, post_event
from worker.batch import worker_name
from worker.webhook_store import ClaimedDelivery, claim, record

log = structlog.get_logger(__name__)


class WebhookDeliverer:
    """Claims, sends and records deliveries until `stop_event` is set."""

    def __init__(self, engine: Engine, box: SecretBox, settings: Settings, *, name: str | None = None) -> None:
        self._engine = engine
        self._box = box
        self._s = settings
        self.name = name or f"{worker_name()}/webhooks"
        self.stop_event = threading.Event()

    def start(self) -> threading.Thread:
        """Run the loop on a daemon thread of this process."""
        thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="tm-webhooks", daemon=True)
        thread.start()
        return thread

    async def run(self) -> None:
        """Rounds until stopped; a round that fails (database away) is logged and the loop goes on."""
        async with new_session(self._s) as session:
            while not self.stop_event.is_set():
                try:
                    busy = await self.round(session) >= self._s.webhook_batch_size
                except Exception:  # the loop must outlive a database outage
                    log.warning("webhooks.round_failed", exc_info=True)
                    busy = False
                if not busy:
                    await asyncio.sleep(self._s.webhook_poll_interval_ms / 1000)

    async def round(self, session: aiohttp.ClientSession) -> int:
        """Claim due deliveries, send them all, record each; returns how many were claimed."""
        claimed = await asyncio.to_thread(claim, self._engine, self._box, self.name, now_ms=int(time.time() * 1000),
                                          lease_ms=self._s.webhook_lease_ms, limit=self._s.webhook_batch_size)
        await asyncio.gather(*(self._deliver(session, d) for d in claimed))
        return len(claimed)

    async def _deliver(self, session: aiohttp.ClientSession, delivery: ClaimedDelivery) -> None:
        started_at = datetime.now(UTC)
        body = body_bytes(delivery.payload)
        headers = signed_headers(delivery.signing_secrets, delivery.event_id, started_at, body)
        answer = await post_event(session, self._s, delivery.url, headers, body)
        state = await asyncio.to_thread(record, self._engine, self._s, delivery, answer, self.name,
                                        started_at=started_at)
        log.info("webhooks.attempt", delivery_id=delivery.id, endpoint_id=delivery.endpoint_id,
                 event_id=delivery.event_id, status=answer.status, error=answer.error, state=state)


def attach_to_worker(settings: Settings) -> None:
    """Run a deliverer in this Celery worker process from `worker_ready` until shutdown begins."""
    holder: dict[str, WebhookDeliverer] = {}

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _ready(**_: Any) -> None:
        holder["d"] = WebhookDeliverer(make_engine(settings, pool_size=4), SecretBox.from_settings(settings),
                                       settings)
        holder["d"].start()

    @signals.worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _stopping(**_: Any) -> None:
        if "d" in holder:
            holder["d"].stop_event.set()
