"""Throughput scenario: tenantmail end to end, then the wire ceiling and the SDK peer, same emulator, same run."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Bench, bench_stack, message
from benchmarks.measure import MachineLoad, own_cpu_s, pct, rows_since, tenant_credentials, waits_s
from benchmarks.peer import run_peer
from benchmarks.wire import render, run_wire
from shared.producer import Producer
from tenantmail.stack import stop_process

Tick = Callable[[str], None]


@dataclass
class ThroughputSize:
    """How big a throughput run is."""

    tenants: int = 200
    messages_per_tenant: int = 50
    latency_ms: float = 200
    workers: int = 2
    concurrency: int = 32
    per_mailbox: int = 4
    peer_messages: int = 2000
    peer_concurrency: tuple[int, ...] = (16, 64, 128)
    strong_peer_messages: int = 6000  # the stronger peers are faster: more messages for a steady figure
    strong_peer_concurrency: tuple[int, ...] = (32, 128)

    @property
    def messages(self) -> int:
        return self.tenants * self.messages_per_tenant


FULL = ThroughputSize()
SMALL = ThroughputSize(tenants=4, messages_per_tenant=5, latency_ms=20, workers=1, concurrency=8,
                       peer_messages=12, peer_concurrency=(4,), strong_peer_messages=12, strong_peer_concurrency=(4,))


def items(size: ThroughputSize) -> list[tuple[int, dict[str, Any]]]:
    """The run's messages, (tenant index, message), tenants interleaved as producers would send them."""
    return [(i % size.tenants, message(i)) for i in range(size.messages)]


def run(size: ThroughputSize, tick: Tick) -> dict[str, float]:
    """One repetition: ours (Redis broker, then RabbitMQ when it runs here), the wire ceiling, the peers."""
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms) as bench:
        tick("throughput: tenantmail")
        figures = ours(bench, size)
        _stop_workers(bench)  # idle workers would only add noise to the other measurements
        if rabbitmq_reachable():
            tick("throughput: tenantmail on RabbitMQ")
            bench.env["BROKER_URL"] = RABBIT_URL
            on_rabbit = ours(bench, size)
            del bench.env["BROKER_URL"]
            _stop_workers(bench)
            figures.update({f"rabbitmq_{k}": on_rabbit[k] for k in ("msgs_per_s", "worker_cpu_s_per_1000_msgs",
                                                                     "p95_s")})
        tick("throughput: wire ceiling")
        figures.update(wire(bench, size))
        figures.update(peer(bench, size, tick))
        for name, module in STRONG_PEERS.items():
            figures.update(strong_peer(bench, size, tick, name, module))
    ours_rate = figures["msgs_per_s"]
    figures["ratio_to_wire"] = round(ours_rate / figures["wire_msgs_per_s"], 3)
    figures["ratio_to_peer"] = round(ours_rate / figures["peer_msgs_per_s"], 2)
    for name in STRONG_PEERS:
        figures[f"ratio_to_{name}"] = round(ours_rate / figures[f"{name}_msgs_per_s"], 2)
    figures["ratio_to_best_peer"] = round(ours_rate / max(figures[f"{n}_msgs_per_s"] for n in (*STRONG_PEERS,
                                                                                                 "peer")), 2)
    return figures


RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_reachable() -> bool:
    """RabbitMQ answers on 127.0.0.1:5672 (the machine's; the run's quorum queue is named by the broker URL)."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


def _stop_workers(bench: Bench) -> None:
    for p in bench.workers:
        stop_process(p, grace_s=30)
    bench.workers.clear()


def ours(bench: Bench, size: ThroughputSize) -> dict[str, float]:
    """tenantmail: warm up one message per tenant, then first enqueue -> last outcome recorded."""
    producer = Producer(bench.engine, bench.settings)
    done_before = bench.terminal_count()
    bench.start_workers(size.workers, size.concurrency)
    producer.enqueue_many([(f"t{i}", message(i)) for i in range(size.tenants)])
    bench.wait_terminal(done_before + size.tenants, timeout_s=180)
    bench.emulator.control.reset()
    cpu0 = bench.worker_cpu_s()
    load = MachineLoad(own_cpu_s(bench))
    todo = items(size)
    t0 = time.time()
    for start in range(0, len(todo), 1000):
        producer.enqueue_many([(f"t{t}", m) for t, m in todo[start:start + 1000]])
    bench.wait_terminal(done_before + size.tenants + size.messages, timeout_s=900)
    rows = rows_since(bench.engine, t0)
    elapsed = max(r.updated_at.timestamp() for r in rows) - t0
    waits = waits_s(rows)
    cpu = bench.worker_cpu_s() - cpu0
    counters = bench.emulator.control.counters()
    rss = bench.worker_rss_mb()
    return {
        "messages": size.messages, "sent": sum(r.state == "sent" for r in rows),
        "msgs_per_s": round(size.messages / elapsed, 1), "elapsed_s": round(elapsed, 2),
        "p50_s": round(pct(waits, 50), 3), "p95_s": round(pct(waits, 95), 3), "p99_s": round(pct(waits, 99), 3),
        "worker_cpu_s_per_1000_msgs": round(cpu * 1000 / size.messages, 3),
        "worker_peak_rss_mb_max": round(max(rss), 1), "worker_peak_rss_mb_mean": round(sum(rss) / len(rss), 1),
        "max_mailbox_concurrency": max(counters["max_concurrency"].values(), default=0),
        "throttled_429": counters["throttled_429"],
        **load.figures(),
    }


def wire(bench: Bench, size: ThroughputSize) -> dict[str, float]:
    """The bare aiohttp client on the same messages, same per-mailbox concurrency."""
    creds = {t: tenant_credentials(t) for t in range(size.tenants)}
    sends = render([(t, creds[t]["sender"], m) for t, m in items(size)])
    bench.emulator.control.reset()
    result = run_wire(bench.emulator, sends, {t: (c["tenant_id"], c["client_id"], c["secret"])
                                              for t, c in creds.items()}, size.per_mailbox)
    return {"wire_msgs_per_s": round(result.messages_per_s, 1), "wire_accepted": result.accepted,
            "wire_elapsed_s": round(result.elapsed_s, 2)}


def peer(bench: Bench, size: ThroughputSize, tick: Tick) -> dict[str, float]:
    """The SDK peer at each threads-pool concurrency; the best one is reported."""
    jobs = []
    for i, (t, m) in enumerate(items(size)[: size.peer_messages]):
        jobs.append((tenant_credentials(t), {"to": m["to"], "subject": m["subject"], "body": m["body"],
                                              "id": f"peer-{i}"}))
    runs = []
    for c in size.peer_concurrency:
        tick(f"throughput: peer -c{c}")
        runs.append(run_peer(bench, jobs, processes=size.workers, concurrency=c, timeout_s=900))
    best = max(runs, key=lambda r: r.messages_per_s)
    out: dict[str, float] = {f"peer_c{r.concurrency}_msgs_per_s": round(r.messages_per_s, 1) for r in runs}
    out.update({"peer_msgs_per_s": round(best.messages_per_s, 1), "peer_best_concurrency": best.concurrency,
                "peer_messages": best.messages, "peer_accepted": best.accepted,
                "peer_cpu_s_per_1000_msgs": round(best.cpu_s * 1000 / max(best.accepted, 1), 3)})
    return out


STRONG_PEERS = {"peer_cached": "benchmarks.peer_cached", "peer_card": "benchmarks.peer_card"}


def strong_peer(bench: Bench, size: ThroughputSize, tick: Tick, name: str, module: str) -> dict[str, float]:
    """A stronger peer (`benchmarks/peer_cached.py`, `benchmarks/peer_card.py`) at each concurrency; the best
    one is reported as `<name>_msgs_per_s`."""
    jobs = []
    for i, (t, m) in enumerate(items(size)[: size.strong_peer_messages]):
        jobs.append((tenant_credentials(t), {"to": m["to"], "subject": m["subject"], "body": m["body"],
                                              "id": f"{name}-{i}"}))
    runs = []
    for c in size.strong_peer_concurrency:
        tick(f"throughput: {name} -c{c}")
        runs.append(run_peer(bench, jobs, processes=size.workers, concurrency=c, timeout_s=900,
                             app_module=module, task=f"{name}.send_mail"))
    best = max(runs, key=lambda r: r.messages_per_s)
    out: dict[str, float] = {f"{name}_c{r.concurrency}_msgs_per_s": round(r.messages_per_s, 1) for r in runs}
    out.update({f"{name}_msgs_per_s": round(best.messages_per_s, 1), f"{name}_best_concurrency": best.concurrency,
                f"{name}_accepted": best.accepted,
                f"{name}_cpu_s_per_1000_msgs": round(best.cpu_s * 1000 / max(best.accepted, 1), 3)})
    return out
