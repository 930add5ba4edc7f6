"""Test harness: real Redis, real databases, real worker processes, the emulator.

`Stack` is what the `make_stack` fixture factory returns: the application's process stack
(`tenantmail.stack`, the one the demo and the benchmarks use) plus a producer and the secret box.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from shared.models import DeliveryAttempt, Notification
from shared.producer import Producer
from shared.secretbox import SecretBox
from tenantmail.stack import ROOT, ProcessStack, wait_until

__all__ = ["FAST", "ROOT", "Stack", "new_encryption_key", "wait_until"]

FAST = {  # retry and lease machinery at test speed
    "TENANTMAIL_BACKOFF_BASE_MS": "50", "TENANTMAIL_BACKOFF_CAP_MS": "400",
    "TENANTMAIL_DISPATCH_INTERVAL_MS": "20", "TENANTMAIL_DISPATCH_LEASE_MS": "3000",
    "TENANTMAIL_SEND_LEASE_MS": "4000", "TENANTMAIL_PROVIDER_CACHE_TTL_MS": "500",
    "TENANTMAIL_SLOT_REQUEUE_MS": "50", "TENANTMAIL_HTTP_TIMEOUT_S": "15",
    "TENANTMAIL_LOG_LEVEL": "INFO",
}


@dataclass
class Stack(ProcessStack):
    """Everything one test needs to run the pipeline end to end: the process stack, a producer, the box."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.producer = Producer(self.engine, self.settings)
        self.box = SecretBox.from_settings(self.settings)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send a signal to a worker process and reap it."""
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def notification(self, nid: str) -> dict[str, Any]:
        """The notification row as a dict."""
        n = Notification.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return dict(conn.execute(select(n).where(n.c.id == nid)).mappings().one())

    def attempts(self, nid: str) -> list[dict[str, Any]]:
        """Its delivery_attempt rows, oldest first."""
        a = DeliveryAttempt.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            rows = conn.execute(select(a).where(a.c.notification_id == nid).order_by(a.c.id)).mappings().all()
            return [dict(r) for r in rows]


def new_encryption_key() -> str:
    """A fresh Fernet key for one test run."""
    return Fernet.generate_key().decode()
