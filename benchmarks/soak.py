"""`tenantmail soak`: a steady load for N minutes with sparse faults; does anything grow without bound?

One run starts its own Redis, a fresh PostgreSQL database, the emulator and worker processes
(benchmarks.harness). A producer enqueues at a steady rate while the emulator answers a few sendMail
requests with 503, 429 (Retry-After 1-3 s) and connection resets. Every `sample_s` the run records,
for the worker processes together, resident memory and open file descriptors; the database's
connections (pg_stat_activity); Redis's key count and used memory; and the backlog (notifications
not yet final). A metric that leaks grows steadily, so for each one the report fits a least-squares
line over the second half of the run (after warm-up) and compares its slope per minute with a
threshold (`THRESHOLDS`); the run PASSes when no slope is over its threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from benchmarks.chaos import ChaosSize, LoadProducer, fault_specs
from benchmarks.harness import Bench, bench_stack
from shared.models import TERMINAL_STATES, Notification
from shared.producer import Producer
from shared.redis_client import sync_client

_N = Notification.__table__  # type: ignore[attr-defined]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Sparse: about 1 request in 60 gets a fault (the chaos run's mix is 10%).
SOAK_FAULT_MIX = (("503", 0.01), ("429", 0.005), ("reset", 0.002))
SOAK_ENV = {"TENANTMAIL_BACKOFF_BASE_MS": "200", "TENANTMAIL_BACKOFF_CAP_MS": "5000",
            "TENANTMAIL_LOG_LEVEL": "WARNING"}
# Growth per minute over the second half above which a metric is said to grow without bound. Each is
# well under what a leak of one unit per notification, per batch or per fault would show at the
# default 20 notifications/s (1,200 a minute, ~24 batches, ~20 faults), and over the noise of a
# steady process (allocator arenas, the broker list's length, connection pools refilling).
THRESHOLDS = {
    "worker_rss_mb": 1.0,       # all worker processes together
    "worker_open_fds": 1.0,
    "pg_connections": 0.5,
    "redis_keys": 10.0,
    "redis_used_memory_mb": 0.1,
    "backlog": 20.0,            # notifications not yet final: the load is kept up with
}


@dataclass
class SoakSize:
    """How long, how fast and how it samples."""

    minutes: float = 10.0
    sample_s: float = 60.0
    rate_per_s: float = 20.0
    tenants: int = 20
    workers: int = 2
    concurrency: int = 8
    latency_ms: float = 50.0


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (minute, value) points; 0 with fewer than two distinct minutes."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n if n else 0.0
    mean_v = sum(v for _, v in points) / n if n else 0.0
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t


def verdict(samples: list[dict[str, float]], thresholds: dict[str, float] = THRESHOLDS) -> dict[str, Any]:
    """Slope per metric over the second half of the samples, each against its threshold."""
    end = samples[-1]["minute"] if samples else 0.0
    half = [s for s in samples if s["minute"] >= end / 2]
    slopes = {name: round(slope_per_min([(s["minute"], s[name]) for s in half]), 4) for name in thresholds}
    checks = {name: {"slope_per_min": slopes[name], "threshold_per_min": limit, "ok": slopes[name] <= limit}
              for name, limit in thresholds.items()}
    return {"second_half_samples": len(half), "metrics": checks, "ok": all(c["ok"] for c in checks.values())}


class Sampler:
    """Reads the figures of one moment from /proc, PostgreSQL and Redis."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.redis = sync_client(bench.env["REDIS_URL"])

    def sample(self, minute: float) -> dict[str, float]:
        """One row of the report."""
        pids = [p.pid for p in self.bench.workers if p.poll() is None]
        memory = self.redis.info("memory")
        with self.bench.engine.connect() as conn:
            pg = conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"))
            backlog = conn.scalar(select(func.count()).where(_N.c.state.not_in(TERMINAL_STATES)))
            sent = conn.scalar(select(func.count()).where(_N.c.state == "sent"))
        return {"minute": round(minute, 3), "workers": len(pids),
                "worker_rss_mb": round(sum(_rss_kb(p) for p in pids) / 1024, 2),
                "worker_open_fds": sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids),
                "pg_connections": int(pg or 0), "redis_keys": int(self.redis.dbsize()),
                "redis_used_memory_mb": round(int(memory["used_memory"]) / 2**20, 3),
                "backlog": int(backlog or 0), "sent": int(sent or 0)}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(size: SoakSize, note: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One soak run from start to report (a dict; `ok` False when a metric grew past its threshold)."""
    duration_s = size.minutes * 60
    load = ChaosSize(notifications=max(1, int(size.rate_per_s * duration_s)), tenants=size.tenants,
                     duration_s=duration_s)
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms, extra_env=SOAK_ENV) as bench:
        control = bench.emulator.control
        for spec in fault_specs(SOAK_FAULT_MIX):
            control.add_fault(**spec)
        bench.start_workers(size.workers, size.concurrency)
        producer = LoadProducer(Producer(bench.engine, bench.settings), load)
        threading.Thread(target=producer.run, name="soak-producer", daemon=True).start()
        sampler, samples, t0 = Sampler(bench), [], time.monotonic()
        for i in range(int(duration_s // size.sample_s) + 1):
            time.sleep(max(0.0, t0 + i * size.sample_s - time.monotonic()))
            samples.append(sampler.sample((time.monotonic() - t0) / 60))
            note(_row(samples[-1]))
        counters = control.counters()
    if producer.error is not None:
        raise RuntimeError("the producer failed") from producer.error
    return {"size": asdict(size), "samples": samples, "verdict": verdict(samples),
            "enqueued": len(producer.ids), "faults_injected": int(counters.get("faults_injected", 0)),
            "send_requests": int(counters.get("send_requests", 0)), "ok": verdict(samples)["ok"]}


_COLUMNS = ("minute", "worker_rss_mb", "worker_open_fds", "pg_connections", "redis_keys", "redis_used_memory_mb",
            "backlog", "sent")


def _row(sample: dict[str, float]) -> str:
    return "  ".join(f"{sample[c]:>{len(c)}}" for c in _COLUMNS)


def text_report(result: dict[str, Any]) -> str:
    """The human-readable report: one row per sample, then each metric's slope and the verdict."""
    size, v = result["size"], result["verdict"]
    lines = [f"tenantmail soak: {size['minutes']} min at {size['rate_per_s']} notifications/s, {size['tenants']} "
             f"tenants, {size['workers']} workers x {size['concurrency']} threads, Graph latency "
             f"{size['latency_ms']:.0f} ms, a sample every {size['sample_s']} s",
             f"enqueued {result['enqueued']}; faults injected {result['faults_injected']} of "
             f"{result['send_requests']} sendMail requests",
             "  ".join(_COLUMNS), *(_row(s) for s in result["samples"]),
             f"slopes per minute over the second half ({v['second_half_samples']} samples):"]
    lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {name}: {c['slope_per_min']:+} per min "
              f"(threshold {c['threshold_per_min']})" for name, c in v["metrics"].items()]
    lines.append(f"result: {'PASS' if result['ok'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tenantmail soak`."""
    d = SoakSize()
    parser.add_argument("--minutes", type=float, default=d.minutes, help="how long the load runs")
    parser.add_argument("--sample-s", type=float, default=d.sample_s, help="seconds between samples (default 60)")
    parser.add_argument("--rate", type=float, default=d.rate_per_s, help="notifications enqueued per second")
    parser.add_argument("--tenants", type=int, default=d.tenants)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--latency-ms", type=float, default=d.latency_ms, help="emulator Graph latency")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the text")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON report is written")


def main(args: argparse.Namespace) -> int:
    """`tenantmail soak`: run, print the report, write it as JSON; 1 when a metric grew past its threshold."""
    size = SoakSize(args.minutes, args.sample_s, args.rate, args.tenants, args.workers, args.concurrency,
                    args.latency_ms)
    started = datetime.now(UTC)
    print("[soak] " + "  ".join(_COLUMNS), file=sys.stderr, flush=True)
    result = run(size, lambda msg: print(f"[soak] {msg}", file=sys.stderr, flush=True))
    result["started_at"] = started.isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{started.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}.json"
    path.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result) + "\n" if args.json else text_report(result))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if result["ok"] else 1
