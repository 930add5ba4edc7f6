"""The fairness, tokens, throttle and enqueue scenarios (throughput has its own module).

Each `run_*` is one repetition: it starts its own stack (harness.bench_stack), measures, cleans up,
and returns flat numeric figures whose names carry their units.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.harness import Bench, _cpu_s, _database, bench_stack, message
from benchmarks.measure import MachineLoad, own_cpu_s, pct, rows_since, wait_until, waits_s
from emulator.demo import tenant_id_for
from shared.db import make_engine
from shared.models import TERMINAL_STATES, Notification
from shared.producer import Producer
from shared.settings import Settings

Tick = Callable[[str], None]
_N = Notification.__table__  # type: ignore[attr-defined]


def _warm_up(bench: Bench, producer: Producer, tenants: int) -> None:
    """One message per tenant so tokens are cached and connections open, then a clean emulator."""
    producer.enqueue_many([(f"t{i}", message(i)) for i in range(tenants)])
    bench.wait_terminal(tenants, timeout_s=180)
    bench.emulator.control.reset()


def _enqueue(producer: Producer, items: list[tuple[str, dict[str, object]]], batch: int = 1000) -> None:
    for start in range(0, len(items), batch):
        producer.enqueue_many(items[start:start + batch])


# --- fairness ------------------------------------------------------------------------------------


@dataclass
class FairnessSize:
    """One big tenant against many small ones."""

    big_messages: int = 50_000
    small_tenants: int = 100
    small_messages: int = 10
    latency_ms: float = 200
    workers: int = 2
    concurrency: int = 32


def run_fairness(size: FairnessSize, tick: Tick) -> dict[str, float]:
    """The big tenant (t0) enqueues everything first; then the small ones; small tenants' waits."""
    tenants = size.small_tenants + 1
    with bench_stack(tenants=tenants, latency_ms=size.latency_ms) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(size.workers, size.concurrency)
        tick("fairness: warm-up")
        _warm_up(bench, producer, tenants)
        load = MachineLoad(own_cpu_s(bench))
        t0 = time.time()
        tick("fairness: big tenant enqueues")
        _enqueue(producer, [("t0", message(i)) for i in range(size.big_messages)])
        t_small = time.time()
        _enqueue(producer, [(f"t{t}", message(i)) for i in range(size.small_messages)
                            for t in range(1, tenants)])
        tick("fairness: small tenants deliver")
        small_total = size.small_tenants * size.small_messages
        wait_until(lambda: _terminal_small(bench, t0) >= small_total, timeout_s=900, what="small tenants' messages")
        done_s = time.time() - t_small
        rows = rows_since(bench.engine, t0)
        machine = load.figures()
    small = waits_s([r for r in rows if r.tenant_id != "t0"])
    return {"big_tenant_messages": size.big_messages, "small_tenants": size.small_tenants,
            "small_messages": len(small), "small_p50_s": round(pct(small, 50), 3),
            "small_p95_s": round(pct(small, 95), 3), "small_max_s": round(max(small), 3),
            "small_all_done_s": round(done_s, 2),
            "big_sent_meanwhile": sum(1 for r in rows if r.tenant_id == "t0" and r.sent_at),
            "big_enqueue_s": round(t_small - t0, 2), **machine}


def _terminal_small(bench: Bench, t0: float) -> int:
    """Small tenants' notifications created since `t0` that reached a terminal state."""
    with bench.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(
            _N.c.tenant_id != "t0", _N.c.created_at >= datetime.fromtimestamp(t0, UTC),
            _N.c.state.in_(TERMINAL_STATES))) or 0)


# --- tokens --------------------------------------------------------------------------------------


@dataclass
class TokensSize:
    """Tenants sending in waves across more than one token lifetime."""

    tenants: int = 500
    token_lifetime_s: int = 30
    waves: int = 8
    wave_interval_s: float = 6.0
    latency_ms: float = 50
    workers: int = 2
    concurrency: int = 32


def run_tokens(size: TokensSize, tick: Tick) -> dict[str, float]:
    """Every tenant sends one message per wave; token requests at the emulator against the ideal."""
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms,
                     token_lifetime_s=size.token_lifetime_s) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(size.workers, size.concurrency)
        bench.emulator.control.reset()
        load = MachineLoad(own_cpu_s(bench))
        start = time.monotonic()
        for wave in range(size.waves):
            tick(f"tokens: wave {wave + 1}/{size.waves}")
            wait_until(lambda w=wave: time.monotonic() - start >= w * size.wave_interval_s,
                       timeout_s=size.wave_interval_s * size.waves + 60, what="next wave", interval_s=0.05)
            producer.enqueue_many([(f"t{t}", message(t)) for t in range(size.tenants)])
        bench.wait_terminal(size.tenants * size.waves, timeout_s=600)
        counters = bench.emulator.control.counters()
        machine = load.figures()
        outbox = bench.emulator.control.outbox()
    lifetime = float(size.token_lifetime_s)
    usable_s = lifetime - min(300.0, 0.1 * lifetime)  # transport/tokens.py refresh margin
    sends: dict[str, list[float]] = defaultdict(list)
    for item in outbox:
        sends[item["tenant_id"]].append(float(item["received_at_epoch_s"]))
    ideal_lifetimes = sum(max(1, math.ceil((max(s) - min(s)) / lifetime)) for s in sends.values())
    ideal_margin = sum(_greedy_windows(sorted(s), usable_s) for s in sends.values())
    requests = sum(int(counters["token_requests"].get(tenant_id_for(t), 0)) for t in range(size.tenants))
    span = max((max(s) - min(s) for s in sends.values()), default=0.0)
    return {"tenants": size.tenants, "token_lifetime_s": size.token_lifetime_s, "run_span_s": round(span, 1),
            "sent": len(outbox), "token_requests": requests, "ideal_tenants_x_lifetimes": ideal_lifetimes,
            "ideal_with_refresh_margin": ideal_margin,
            "token_requests_over_ideal": round(requests / ideal_margin, 3) if ideal_margin else 0.0,
            "token_errors": sum(counters["token_errors"].values()), **machine}


def _greedy_windows(times: list[float], usable_s: float) -> int:
    """Fewest tokens that cover these send times when a token is used for `usable_s` after issue."""
    count, until = 0, -math.inf
    for t in times:
        if t > until:
            count, until = count + 1, t + usable_s
    return count


# --- throttle ------------------------------------------------------------------------------------


@dataclass
class ThrottleSize:
    """Few busy mailboxes, injected 429s with Retry-After, the emulator's 4-per-mailbox limit on."""

    tenants: int = 10
    messages_per_tenant: int = 100
    fault_probability: float = 0.1
    retry_after: str = "1"
    latency_ms: float = 200
    workers: int = 2
    concurrency: int = 32


def run_throttle(size: ThrottleSize, tick: Tick) -> dict[str, float]:
    """Send while the emulator answers a share of sendMail calls with 429 + Retry-After."""
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(size.workers, size.concurrency)
        tick("throttle: warm-up")
        _warm_up(bench, producer, size.tenants)
        bench.emulator.control.add_fault(kind="429", route="sendMail", probability=size.fault_probability,
                                         retry_after=size.retry_after)
        load = MachineLoad(own_cpu_s(bench))
        t0 = time.time()
        tick("throttle: sending through 429s")
        total = size.tenants * size.messages_per_tenant
        _enqueue(producer, [(f"t{i % size.tenants}", message(i)) for i in range(total)])
        bench.wait_terminal(size.tenants + total, timeout_s=900)
        rows = rows_since(bench.engine, t0)
        counters = bench.emulator.control.counters()
        machine = load.figures()
    return {"messages": total, "sent": sum(r.state == "sent" for r in rows),
            "elapsed_s": round(max(r.updated_at.timestamp() for r in rows) - t0, 2),
            "max_mailbox_concurrency": max(counters["max_concurrency"].values(), default=0),
            "throttled_429": counters["throttled_429"], "faults_injected": counters["faults_injected"],
            "requests_inside_retry_after": counters["requests_inside_retry_after"],
            "requests_in_flight_at_429": counters["requests_in_flight_at_429"], **machine}


# --- enqueue -------------------------------------------------------------------------------------


@dataclass
class EnqueueSize:
    """Producer.enqueue_many into a fresh PostgreSQL database."""

    notifications: int = 50_000
    batch: int = 1000
    tenants: int = 100


def run_enqueue(size: EnqueueSize, tick: Tick) -> dict[str, float]:
    """Validate and insert `notifications` in batches; notifications/s over the whole loop."""
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp, _database("postgres", Path(tmp)) as url:
        engine = make_engine(Settings(database_url=url))
        try:
            producer = Producer(engine, Settings(database_url=url))
            items = [(f"t{i % size.tenants}", message(i)) for i in range(size.notifications)]
            producer.enqueue_many(items[:10])  # connection pool and statement caches warm
            tick("enqueue: enqueue_many")
            load = MachineLoad(lambda: _cpu_s(os.getpid()))
            started = time.perf_counter()
            _enqueue(producer, items, size.batch)
            elapsed = time.perf_counter() - started
            machine = load.figures()
        finally:
            engine.dispose()
    return {"notifications": size.notifications, "batch": size.batch, "elapsed_s": round(elapsed, 3),
            "notifications_per_s": round(size.notifications / elapsed, 1), **machine}
