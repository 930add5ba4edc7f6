"""Test harness: real Redis, real databases, real worker processes, the emulator.

`Stack` is what the `stack` fixture factory returns: settings pointing at everything, a producer,
and `start_workers(n)` that launches `tenantmail worker` processes and stops them afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import Engine, select

from shared.db import make_engine
from shared.models import TERMINAL_STATES, DeliveryAttempt, Notification
from shared.producer import Producer
from shared.secretbox import SecretBox
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FAST = {  # retry and lease machinery at test speed
    "TENANTMAIL_BACKOFF_BASE_MS": "50", "TENANTMAIL_BACKOFF_CAP_MS": "400",
    "TENANTMAIL_DISPATCH_INTERVAL_MS": "20", "TENANTMAIL_DISPATCH_LEASE_MS": "3000",
    "TENANTMAIL_SEND_LEASE_MS": "4000", "TENANTMAIL_PROVIDER_CACHE_TTL_MS": "500",
    "TENANTMAIL_SLOT_REQUEUE_MS": "50", "TENANTMAIL_HTTP_TIMEOUT_S": "15",
    "TENANTMAIL_LOG_LEVEL": "INFO",
}


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.2)


@dataclass
class Stack:
    """Everything one test needs to run the pipeline end to end."""

    env: dict[str, str]
    log_dir: Path
    settings: Settings = field(init=False)
    engine: Engine = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = Settings(**{k.removeprefix("TENANTMAIL_").lower(): v for k, v in self.env.items()
                                    if k.startswith("TENANTMAIL_")},
                                 database_url=self.env["DATABASE_URL"], redis_url=self.env["REDIS_URL"])
        self.engine = make_engine(self.settings)
        self.producer = Producer(self.engine, self.settings)
        self.box = SecretBox.from_settings(self.settings)

    def start_workers(
        self, n: int = 1, *, concurrency: int = 8, dispatcher: bool = True, metrics_port: int | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """Launch n worker processes (each with a standby dispatcher unless told otherwise)."""
        started = []
        for _ in range(n):
            i = len(self.procs)
            cmd = [sys.executable, "-m", "tenantmail", "worker", f"--concurrency={concurrency}",
                   f"--hostname=w{i}@%h"]
            if metrics_port:
                cmd.append(f"--metrics-port={metrics_port}")
            if not dispatcher:
                cmd.append("--no-dispatcher")
            log = open(self.log_dir / f"worker{i}.log", "wb")
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            self.procs.append(proc)
            started.append(proc)
        return started

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Send a signal to a worker process and reap it."""
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop every worker process (SIGTERM, then SIGKILL)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.engine.dispose()

    def logs(self) -> str:
        """All worker output so far (for failure messages and secret scans)."""
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.log_dir.glob("worker*.log")))

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        """Current state of each notification."""
        n = Notification.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return dict(conn.execute(select(n.c.id, n.c.state).where(n.c.id.in_(list(ids)))).all())

    def wait_terminal(self, ids: list[str], timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until every notification is sent, failed or ambiguous; returns their states."""
        def done() -> dict[str, str] | None:
            states = self.states(ids)
            return states if len(states) == len(ids) and all(s in TERMINAL_STATES for s in states.values()) else None
        try:
            return wait_until(done, timeout_s=timeout_s, what=f"{len(ids)} notifications to finish")  # type: ignore[no-any-return]
        except AssertionError:
            states = self.states(ids)
            raise AssertionError(f"not terminal: {sorted(set(states.values()))}\n{self.logs()[-4000:]}") from None

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
