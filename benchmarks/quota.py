"""The `quota` scenario: one sender with a daily recipient limit gets more recipients than it allows.

Issue 14's check of Exchange's limits kept ahead: the workers must send exactly the sender's budget
inside its rolling window, let the rest wait (`retry_wait`, reason `quota`) and send them once the
window frees, never fail one, and never send over the limit; the emulator, with the same limit, counts
the messages Exchange would have bounced (NDRs). The "24 h" window is shortened for both (the workers'
`TENANTMAIL_RECIPIENT_WINDOW_S`, the emulator's `recipient_window_s`) so a run takes minutes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from benchmarks.harness import bench_stack
from benchmarks.measure import MachineLoad, own_cpu_s, rows_since
from emulator.demo import client_id_for, make_tenant, tenant_id_for
from shared.models import Notification
from shared.producer import Producer
from shared.providers import save_graph_provider
from shared.secretbox import SecretBox
from shared.senders import SenderIdentity

Tick = Callable[[str], None]
_N = Notification.__table__  # type: ignore[attr-defined]


@dataclass
class QuotaSize:
    """12,000 recipients (two per notification) for a sender allowed 10,000 per window."""

    daily_limit: int = 10_000
    notifications: int = 6_000
    recipients_per_notification: int = 2
    window_s: float = 90.0
    latency_ms: float = 20
    workers: int = 2
    concurrency: int = 32


def run_quota(size: QuotaSize, tick: Tick) -> dict[str, float]:
    """Enqueue everything at once; measure what went when, and what waited for the quota."""
    env = {"TENANTMAIL_RECIPIENT_WINDOW_S": str(size.window_s)}
    with bench_stack(tenants=1, latency_ms=size.latency_ms, extra_env=env) as bench:
        bench.emulator.control.set_config(recipients_per_day=size.daily_limit, recipient_window_s=size.window_s)
        spec = make_tenant(0)
        address = spec["mailboxes"][0]["address"]
        save_graph_provider(bench.engine, SecretBox.from_settings(bench.settings), "t0", sender_address=address,
                            azure_tenant=tenant_id_for(0), client_id=client_id_for(0),
                            client_secret=spec["apps"][0]["secrets"][0]["value"],
                            senders=[SenderIdentity("default", address, None, None, size.daily_limit)])
        bench.start_workers(size.workers, size.concurrency)
        producer = Producer(bench.engine, bench.settings)
        load = MachineLoad(own_cpu_s(bench))
        t0 = time.time()
        tick("quota: enqueue")
        items = [("t0", _message(i, size.recipients_per_notification)) for i in range(size.notifications)]
        for start in range(0, len(items), 1000):
            producer.enqueue_many(items[start:start + 1000])
        waited = _QuotaWatch(bench.engine)
        tick("quota: sending through the window")
        try:
            bench.wait_terminal(size.notifications, timeout_s=size.window_s * 4 + 600)
        finally:
            waited.stop()
        rows = rows_since(bench.engine, t0)
        outbox = bench.emulator.control.outbox()
        machine = load.figures()
    in_window = _max_in_window(outbox, size.window_s)
    return {"notifications": size.notifications, "recipients": size.notifications * size.recipients_per_notification,
            "daily_limit": size.daily_limit, "window_s": size.window_s,
            "sent": sum(r.state == "sent" for r in rows), "failed": sum(r.state == "failed" for r in rows),
            "waited_quota": len(waited.ids), "max_recipients_in_window": in_window,
            "sent_over_limit": _over_limit(outbox, size.window_s, size.daily_limit),
            "ndrs": sum(1 for m in outbox if m.get("ndr")),
            "elapsed_s": round(max(r.updated_at.timestamp() for r in rows) - t0, 2), **machine}


def _message(i: int, recipients: int) -> dict[str, Any]:
    return {"to": [f"user{i}-{n}@example.org" for n in range(recipients)], "subject": f"Digest {i}",
            "body": "Your weekly digest."}


class _QuotaWatch:
    """Polls the database for rows waiting with reason `quota` (the reason is cleared at the next claim)."""

    def __init__(self, engine: Any, interval_s: float = 0.2) -> None:
        self.ids: set[str] = set()
        self._engine, self._interval_s = engine, interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._interval_s):
            with self._engine.connect() as conn:
                self.ids.update(conn.execute(select(_N.c.id).where(_N.c.wait_reason == "quota")).scalars())

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)


def _windows(outbox: list[dict[str, Any]], window_s: float) -> list[tuple[int, int]]:
    """For each accepted message in time order: (its recipients, recipients in the window ending with it)."""
    seen: deque[tuple[float, int]] = deque()
    total, out = 0, []
    for m in sorted(outbox, key=lambda m: m["received_at_epoch_s"]):
        at = m["received_at_epoch_s"]
        while seen and seen[0][0] <= at - window_s:
            total -= seen.popleft()[1]
        seen.append((at, m["recipients"]))
        total += m["recipients"]
        out.append((m["recipients"], total))
    return out


def _max_in_window(outbox: list[dict[str, Any]], window_s: float) -> int:
    return max((total for _, total in _windows(outbox, window_s)), default=0)


def _over_limit(outbox: list[dict[str, Any]], window_s: float, limit: int) -> int:
    """Messages accepted while the rolling window already held more recipients than the limit."""
    return sum(1 for _, total in _windows(outbox, window_s) if total > limit)
