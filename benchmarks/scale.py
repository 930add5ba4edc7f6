"""Scale-out on one machine: the same run with 1, 2 and 4 worker processes, and what each message costs.

One stack (PostgreSQL, a private Redis that is also the Celery broker, the emulator at 200 ms); for each
worker count, a warm-up of one message per tenant, then `messages` notifications from first enqueue to
last outcome. Beside the rate: CPU milliseconds per message at the workers, at PostgreSQL (every postgres
process of the server, so other users of it count too: see `busy_cores_not_ours`) and at redis-server,
WAL bytes and Redis commands (tokens, throttles, send marks, quotas, breakers and the broker) per message.
These are the per-message costs `docs/scaling.md` models a fleet from; the 4-process row shows where the
machine's cores run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.control_plane import _postgres_cpu_s, _wal_bytes_since, _wal_lsn
from benchmarks.harness import Bench, _cpu_s, bench_stack, message
from benchmarks.measure import MachineLoad, own_cpu_s, rows_since
from shared.producer import Producer
from shared.redis_client import sync_client
from tenantmail.stack import stop_process

Tick = Callable[[str], None]


@dataclass
class ScaleSize:
    """Worker counts and the run each one gets."""

    tenants: int = 200
    messages: int = 20_000
    latency_ms: float = 200
    concurrency: int = 32
    worker_counts: tuple[int, ...] = (1, 2, 4)


def run_scale(size: ScaleSize, tick: Tick) -> dict[str, float]:
    """One repetition: every worker count in turn on one stack; figures are prefixed `w<n>_`."""
    figures: dict[str, float] = {}
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms) as bench:
        done = 0
        for n in size.worker_counts:
            tick(f"scale: {n} worker process(es)")
            done, measured = _measure(bench, size, n, done)
            figures.update({f"w{n}_{k}": v for k, v in measured.items()})
            for p in bench.workers:
                stop_process(p, grace_s=30)
            bench.workers.clear()
    return figures


def _measure(bench: Bench, size: ScaleSize, workers: int, done: int) -> tuple[int, dict[str, float]]:
    producer = Producer(bench.engine, bench.settings)
    redis = sync_client(bench.env["REDIS_URL"])
    redis_pid = int(redis.info("server")["process_id"])
    bench.start_workers(workers, size.concurrency)
    producer.enqueue_many([(f"t{i}", message(i)) for i in range(size.tenants)])
    done += size.tenants
    bench.wait_terminal(done, timeout_s=300)
    todo = [(f"t{i % size.tenants}", message(i)) for i in range(size.messages)]
    load = MachineLoad(own_cpu_s(bench))
    wal0, pg0, cpu0, redis0 = _wal_lsn(bench), _postgres_cpu_s(), bench.worker_cpu_s(), _cpu_s(redis_pid)
    commands0 = int(redis.info("stats")["total_commands_processed"])
    t0 = time.time()
    for start in range(0, len(todo), 1000):
        producer.enqueue_many(todo[start:start + 1000])
    done += size.messages
    bench.wait_terminal(done, timeout_s=900)
    rows = rows_since(bench.engine, t0)
    elapsed = max(r.updated_at.timestamp() for r in rows) - t0
    per_msg = 1000 / size.messages  # seconds -> ms per message
    commands = int(redis.info("stats")["total_commands_processed"]) - commands0
    return done, {
        "msgs_per_s": round(size.messages / elapsed, 1),
        "sent": sum(r.state == "sent" for r in rows),
        "worker_cpu_ms_per_msg": round((bench.worker_cpu_s() - cpu0) * per_msg, 3),
        "pg_cpu_ms_per_msg": round((_postgres_cpu_s() - pg0) * per_msg, 3),
        "pg_wal_bytes_per_msg": round(_wal_bytes_since(bench, wal0) / size.messages, 1),
        "redis_cpu_ms_per_msg": round((_cpu_s(redis_pid) - redis0) * per_msg, 3),
        "redis_commands_per_msg": round(commands / size.messages, 1),
        **load.figures(),
    }
