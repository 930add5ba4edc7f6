"""The scenarios a user feels: one notification at a time on an idle system (`latency`), and enqueue over
HTTP from many concurrent application processes (`http_enqueue`).

`latency`: one notification every `interval_ms` for `duration_s` through the Python producer, one worker,
Graph answering in `latency_ms`; each notification's overhead is enqueue -> recorded sent (`sent_at -
created_at`) minus the emulator's latency.

`http_enqueue`: `api_processes` `tenantmail api` processes on PostgreSQL (one per core by default), and
`clients` concurrent aiohttp clients in this process, first posting `:batch` requests of `batch` items,
then single `POST /v1/notifications`. No worker runs: this measures the API and the database alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from api.keys import create_key
from benchmarks.harness import bench_stack, message
from benchmarks.measure import MachineLoad, pct, rows_since
from shared.producer import Producer
from tenantmail.embedded import free_port
from tenantmail.stack import wait_until

Tick = Callable[[str], None]


@dataclass
class LatencySize:
    """A trickle of single notifications."""

    interval_ms: float = 100
    duration_s: float = 60
    latency_ms: float = 200
    concurrency: int = 8


def run_latency(size: LatencySize, tick: Tick) -> dict[str, float]:
    """One repetition of `latency`."""
    with bench_stack(tenants=4, latency_ms=size.latency_ms) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(1, size.concurrency)
        producer.enqueue_many([(f"t{i}", message(i)) for i in range(4)])  # tokens cached, connections open
        bench.wait_terminal(4, timeout_s=120)
        tick("latency: trickle")
        count = max(1, int(size.duration_s * 1000 / size.interval_ms))
        t0 = time.time()
        for i in range(count):
            due = t0 + i * size.interval_ms / 1000
            time.sleep(max(0.0, due - time.time()))
            producer.enqueue(f"t{i % 4}", message(i))
        bench.wait_terminal(4 + count, timeout_s=120 + size.duration_s)
        rows = rows_since(bench.engine, t0)
    overhead_ms = sorted((r.sent_at.timestamp() - r.created_at.timestamp()) * 1000 - size.latency_ms
                         for r in rows if r.sent_at)
    return {"notifications": count, "sent": len(overhead_ms), "graph_latency_ms": size.latency_ms,
            "overhead_p50_ms": round(pct(overhead_ms, 50), 1), "overhead_p95_ms": round(pct(overhead_ms, 95), 1),
            "overhead_p99_ms": round(pct(overhead_ms, 99), 1), "overhead_max_ms": round(max(overhead_ms), 1)}


@dataclass
class HttpEnqueueSize:
    """Concurrent HTTP producers against `tenantmail api`."""

    tenants: int = 10
    clients: int = 32
    batch: int = 500
    batch_notifications: int = 50_000
    single_posts: int = 10_000
    api_processes: int = os.cpu_count() or 2


def run_http_enqueue(size: HttpEnqueueSize, tick: Tick) -> dict[str, float]:
    """One repetition of `http_enqueue`."""
    # The per-tenant rate limit would be what is measured; lift it far above the load.
    with bench_stack(tenants=0, latency_ms=0, extra_env={
            "TENANTMAIL_API_NOTIFICATIONS_PER_MINUTE": str(10 * (size.batch_notifications + size.single_posts)),
            "TENANTMAIL_LOG_LEVEL": "WARNING"}) as bench:
        keys = [create_key(bench.engine, f"h{t}", "sender", label="bench") for t in range(size.tenants)]
        ports = [free_port() for _ in range(size.api_processes)]
        for i, port in enumerate(ports):
            bench.procs.start(f"api{i}", "api", "--host", "127.0.0.1", "--port", str(port))
        wait_until(lambda: all(_answers(p) for p in ports), timeout_s=60, what="the API processes")
        tick("http_enqueue: batches")
        load = MachineLoad()
        batch = asyncio.run(_drive(ports, keys, size, single=False))
        tick("http_enqueue: single posts")
        single = asyncio.run(_drive(ports, keys, size, single=True))
        figures = load.figures()
    return {"api_processes": size.api_processes, "clients": size.clients,
            "batch_notifications_per_s": round(batch["items"] / batch["elapsed_s"], 1),
            "batch_request_p99_ms": round(pct(batch["latencies_ms"], 99), 1),
            "single_posts_per_s": round(single["items"] / single["elapsed_s"], 1),
            "single_p50_ms": round(pct(single["latencies_ms"], 50), 2),
            "single_p99_ms": round(pct(single["latencies_ms"], 99), 2),
            "errors": batch["errors"] + single["errors"], **figures}


def _answers(port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500
    except requests.ConnectionError:
        return False


async def _drive(ports: list[int], keys: list[str], size: HttpEnqueueSize, *, single: bool) -> dict[str, Any]:
    """Run `size.clients` clients until the work is done; items, elapsed seconds, request latencies."""
    total = size.single_posts if single else size.batch_notifications // size.batch
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)
    latencies: list[float] = []
    errors = 0

    async def client(index: int) -> None:
        nonlocal errors
        port, key = ports[index % len(ports)], keys[index % len(keys)]
        base = f"http://127.0.0.1:{port}/v1/notifications"
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            while not queue.empty():
                n = queue.get_nowait()
                url, body = (base, message(n)) if single else (
                    base + ":batch", {"items": [message(n * size.batch + i) for i in range(size.batch)]})
                started = time.perf_counter()
                async with http.post(url, json=body) as resp:
                    await resp.read()
                    errors += resp.status not in (200, 201, 202)
                latencies.append((time.perf_counter() - started) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(size.clients)))
    elapsed = time.perf_counter() - t0
    return {"items": total * (1 if single else size.batch), "elapsed_s": elapsed, "latencies_ms": sorted(latencies),
            "errors": errors}
