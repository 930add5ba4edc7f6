"""The control plane's ceiling: what dispatch, claims and outcome writes carry when Graph costs nothing.

Graph answers at once (latency 0) and the messages spread over many mailboxes, so no worker waits for a
mailbox slot: the rate is set by the dispatcher, the claims, the outcome writes and the broker. Beside
the rate, what each message costs PostgreSQL: CPU milliseconds of the server's processes (the machine's
whole PostgreSQL, so other users of it count too: see `busy_cores_not_ours`) and WAL bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from benchmarks.harness import Bench, _cpu_s, bench_stack, message
from benchmarks.measure import MachineLoad, own_cpu_s, rows_since
from shared.producer import Producer

Tick = Callable[[str], None]


@dataclass
class ControlPlaneSize:
    """Many mailboxes, no Graph latency."""

    tenants: int = 500
    messages_per_tenant: int = 40
    workers: int = 2
    concurrency: int = 32

    @property
    def messages(self) -> int:
        return self.tenants * self.messages_per_tenant


def run_control_plane(size: ControlPlaneSize, tick: Tick) -> dict[str, float]:
    """One repetition: warm up one message per tenant, then first enqueue -> last outcome recorded."""
    with bench_stack(tenants=size.tenants, latency_ms=0) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(size.workers, size.concurrency)
        producer.enqueue_many([(f"t{i}", message(i)) for i in range(size.tenants)])
        bench.wait_terminal(size.tenants, timeout_s=300)
        tick("control_plane: run")
        todo = [(f"t{i % size.tenants}", message(i)) for i in range(size.messages)]
        load = MachineLoad(own_cpu_s(bench))
        wal0, pg0, cpu0 = _wal_lsn(bench), _postgres_cpu_s(), bench.worker_cpu_s()
        t0 = time.time()
        for start in range(0, len(todo), 1000):
            producer.enqueue_many(todo[start:start + 1000])
        bench.wait_terminal(size.tenants + size.messages, timeout_s=900)
        rows = rows_since(bench.engine, t0)
        elapsed = max(r.updated_at.timestamp() for r in rows) - t0
        wal_bytes, pg_cpu_s = _wal_bytes_since(bench, wal0), _postgres_cpu_s() - pg0
        worker_cpu_s = bench.worker_cpu_s() - cpu0
        figures = load.figures()
    return {"messages": size.messages, "sent": sum(r.state == "sent" for r in rows),
            "msgs_per_s": round(size.messages / elapsed, 1), "elapsed_s": round(elapsed, 2),
            "pg_cpu_ms_per_msg": round(pg_cpu_s * 1000 / size.messages, 3),
            "pg_wal_bytes_per_msg": round(wal_bytes / size.messages, 1),
            "worker_cpu_ms_per_msg": round(worker_cpu_s * 1000 / size.messages, 3), **figures}


def _wal_lsn(bench: Bench) -> str:
    with bench.engine.connect() as conn:
        return str(conn.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())


def _wal_bytes_since(bench: Bench, lsn: str) -> int:
    with bench.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:lsn AS pg_lsn))"),
                                {"lsn": lsn}).scalar_one())


def _postgres_cpu_s() -> float:
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "postgres":
                    total += _cpu_s(int(proc.name))
            except OSError:
                continue
    return total
