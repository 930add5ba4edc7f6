"""End-to-end throughput: producers enqueue, workers deliver through the emulator at 200 ms.

Run: python benchmarks/pipeline_throughput.py [--tenants 200] [--messages 10000] [--latency-ms 200]
     [--workers 2] [--concurrency 16] [--database postgres|sqlite]

Each tenant first sends one warm-up message (tokens cached, connections open); the measured run is
then from the first enqueue to the last outcome recorded. Prints one JSON line, then a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from benchmarks.harness import bench_stack, message
from shared.models import Notification
from shared.producer import Producer

_N = Notification.__table__  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="extra TENANTMAIL_ setting for the workers, e.g. --set BATCH_SIZE=100")
    args = ap.parse_args()
    extra = {f"TENANTMAIL_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.set)}
    with bench_stack(tenants=args.tenants, latency_ms=args.latency_ms, database=args.database,
                     extra_env=extra) as bench:
        producer = Producer(bench.engine, bench.settings)
        bench.start_workers(args.workers, args.concurrency)
        producer.enqueue_many([(f"t{i}", message(i)) for i in range(args.tenants)])
        bench.wait_terminal(args.tenants, timeout_s=120)
        bench.emulator.control.reset()
        cpu0 = bench.worker_cpu_s()
        roles0 = bench.cpu_by_role_s()

        t0 = time.time()
        for start in range(0, args.messages, 1000):
            chunk = range(start, min(start + 1000, args.messages))
            producer.enqueue_many([(f"t{i % args.tenants}", message(i)) for i in chunk])
        enqueued_s = time.time() - t0
        bench.wait_terminal(args.tenants + args.messages, timeout_s=600)
        with bench.engine.connect() as conn:
            rows = conn.execute(select(_N.c.created_at, _N.c.sent_at, _N.c.updated_at, _N.c.state)
                                .where(_N.c.created_at >= _utc(t0))).all()
        last = max(r.updated_at.timestamp() for r in rows)
        elapsed = last - t0
        waits = sorted(r.sent_at.timestamp() - r.created_at.timestamp() for r in rows if r.sent_at)
        counters = bench.emulator.control.counters()
        cpu = bench.worker_cpu_s() - cpu0
        roles = {k: round((v - roles0[k]) * 1000 / args.messages, 3) for k, v in bench.cpu_by_role_s().items()}
        result = {
            "scenario": "pipeline_throughput", "tenants": args.tenants, "messages": args.messages,
            "latency_ms": args.latency_ms, "workers": args.workers, "concurrency": args.concurrency,
            "database": args.database, "settings": extra, "elapsed_s": round(elapsed, 2),
            "messages_per_s": round(args.messages / elapsed, 1), "enqueue_s": round(enqueued_s, 2),
            "sent": sum(r.state == "sent" for r in rows),
            "p50_s": round(_pct(waits, 50), 3), "p95_s": round(_pct(waits, 95), 3), "p99_s": round(_pct(waits, 99), 3),
            "worker_cpu_ms_per_msg": round(cpu * 1000 / args.messages, 3),
            "cpu_ms_per_msg_by_role": roles,
            "worker_peak_rss_mb": [round(x, 1) for x in bench.worker_rss_mb()],
            "emulator_accepted": counters["accepted"],
            "max_mailbox_concurrency": max(counters["max_concurrency"].values()),
            "throttled_429": counters["throttled_429"],
            "requests_inside_retry_after": counters["requests_inside_retry_after"],
            "token_requests_during_run": sum(counters["token_requests"].values()),
            "machine": f"{platform.machine()} {platform.python_version()}",
        }
        print(json.dumps(result))
        print(f"{result['messages_per_s']} msg/s end to end ({args.messages} messages, {args.tenants} tenants, "
              f"{args.latency_ms:.0f} ms Graph latency, {args.workers} workers x {args.concurrency} threads); "
              f"p95 enqueue->accepted {result['p95_s']} s")
    return 0


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def _utc(ts: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime
    return datetime.fromtimestamp(ts, UTC)


if __name__ == "__main__":
    sys.exit(main())
