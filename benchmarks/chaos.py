"""`tenantmail chaos`: deliver notifications while workers die, Redis forgets and PostgreSQL restarts.

One run starts its own Redis, a private PostgreSQL instance (benchmarks.private_pg), the emulator
and worker processes (benchmarks.harness). A producer thread enqueues the notifications at a steady
rate over `duration_s` (with idempotency keys, retrying while the database is down), while the
emulator injects 5% 503, 3% 429 (Retry-After 1-3 s), 1% 504 after committing the message and 1%
connection resets. Spread over the same time: three SIGKILLs of a worker that has sends in flight
(each replaced by a new worker), one Redis FLUSHALL and one PostgreSQL restart; with `--sentinel`, Redis
is a Sentinel group (benchmarks.redis_sentinel) and its master is SIGKILLed halfway, the replica
promoted, and delivery must resume on the same workers. With `--outages` (benchmarks.chaos_outages),
Graph answers 503 to everything for longer than the old attempt budget, the token endpoint 503 for a
minute, Redis is stopped (not flushed), a worker is SIGSTOPped past its send lease, and a tenant's secret
is revoked and fixed a minute later. When every
notification has settled (or `settle_timeout_s` passed) the checks of benchmarks.chaos_checks run
on the database and the emulator's outbox; the exit status is 1 when any invariant fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from benchmarks import chaos_checks
from benchmarks.chaos_outages import HELD_TENANT, Outages, held_tenant_evidence, outage_schedule
from benchmarks.harness import Bench, bench_stack, message
from benchmarks.private_pg import PrivatePostgres, private_postgres
from shared.holds import HELD_EVENT
from shared.models import ActivityEvent, DeliveryAttempt, Notification
from shared.producer import EnqueueItem, Producer
from shared.redis_client import sync_client
from worker.sendmarks import mark_key

_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
_E = ActivityEvent.__table__  # type: ignore[attr-defined]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# The share of sendMail requests each fault answers, in the order the emulator tries the rules.
FAULT_MIX = (("503", 0.05), ("429", 0.03), ("504_after_commit", 0.01), ("reset", 0.01))
RETRY_AFTER_S = {"min_s": 1.0, "max_s": 3.0}
REQUEST_LOG_SIZE = 200_000  # the emulator keeps every request of a run, for diagnosing a violation
# Leases and backoff shortened so a killed worker's rows come back within seconds, not minutes.
CHAOS_ENV = {
    "TENANTMAIL_SEND_LEASE_MS": "10000", "TENANTMAIL_DISPATCH_LEASE_MS": "5000",
    "TENANTMAIL_BACKOFF_BASE_MS": "200", "TENANTMAIL_BACKOFF_CAP_MS": "5000",
    "TENANTMAIL_HTTP_TIMEOUT_S": "10", "TENANTMAIL_LOG_LEVEL": "WARNING",
}


@dataclass
class ChaosSize:
    """How big a run is and how hard it is hit."""

    notifications: int = 20_000
    tenants: int = 200
    duration_s: float = 120.0
    workers: int = 2
    concurrency: int = 16
    latency_ms: float = 100.0
    kills: int = 3
    pg_down_s: float = 3.0
    seed: int | None = None
    settle_timeout_s: float = 900.0
    settings: dict[str, str] = field(default_factory=dict)
    sentinel: bool = False  # Redis as a Sentinel group whose master is killed halfway
    outages: bool = False  # the outages of benchmarks.chaos_outages, with these durations
    graph_outage_s: float = 150.0
    token_outage_s: float = 60.0
    redis_down_s: float = 15.0
    secret_fix_after_s: float = 60.0


SMALL = ChaosSize(notifications=1_500, tenants=30, duration_s=30.0, settle_timeout_s=150.0)
# The failover at test size: one kill besides it, so the run stays short.
SENTINEL_SMALL = ChaosSize(notifications=800, tenants=20, duration_s=20.0, kills=1, settle_timeout_s=150.0,
                           sentinel=True)
# The outages at test size: shorter, with test-speed breakers (a probe every 2 s) so the run stays short.
OUTAGES_SMALL = ChaosSize(notifications=800, tenants=20, duration_s=40.0, kills=1, settle_timeout_s=180.0,
                          outages=True, graph_outage_s=20.0, token_outage_s=10.0, redis_down_s=5.0,
                          secret_fix_after_s=15.0,
                          settings={"TENANTMAIL_BREAKER_PROBE_INTERVAL_MS": "2000",
                                    "TENANTMAIL_BREAKER_RAMP_STEP_MS": "500"})
RESUME_TIMEOUT_S = 60.0


def fault_specs(mix: tuple[tuple[str, float], ...] = FAULT_MIX) -> list[dict[str, Any]]:
    """Probability rules that give each kind its share of all requests.

    The emulator rolls the rules in order and the first that fires answers, so each rule gets the
    probability conditional on the earlier ones not firing.
    """
    specs, left = [], 1.0
    for kind, share in mix:
        spec: dict[str, Any] = {"route": "sendMail", "kind": kind, "probability": share / left}
        if kind == "429":
            spec["retry_after"] = RETRY_AFTER_S
        specs.append(spec)
        left -= share
    return specs


def schedule(size: ChaosSize) -> list[tuple[float, str]]:
    """(seconds after the start, event): kills spread from 15% to 75% of the enqueue time, the
    FLUSHALL at 30%, the Redis failover (with `sentinel`) at 50% and the PostgreSQL restart at 60%."""
    kills = [0.15 + 0.6 * i / max(1, size.kills - 1) for i in range(size.kills)]
    events = [(f, "kill") for f in kills] + [(0.30, "flushall"), (0.60, "restart_postgres")]
    if size.sentinel:
        events.append((0.50, "fail_over_redis"))
    timed = [(round(f * size.duration_s, 3), name) for f, name in events]
    if size.outages:
        timed += outage_schedule(size)
    return sorted(timed)


@dataclass
class LoadProducer:
    """Enqueues `count` notifications at a steady rate on a thread; retries while the database is down."""

    producer: Producer
    size: ChaosSize
    ids: list[str] = field(default_factory=list)
    retries: int = 0
    error: BaseException | None = None

    def run(self) -> None:
        n, tenants = self.size.notifications, self.size.tenants
        chunks = max(1, int(self.size.duration_s / 0.2))
        per_chunk = -(-n // chunks)
        t0 = time.monotonic()
        try:
            for c, start in enumerate(range(0, n, per_chunk)):
                items = [EnqueueItem(f"t{i % tenants}", message(i), f"chaos-{i}")
                         for i in range(start, min(n, start + per_chunk))]
                self.ids += self._enqueue(items)
                time.sleep(max(0.0, t0 + (c + 1) * 0.2 - time.monotonic()))
        except BaseException as exc:  # reported by the run, never swallowed
            self.error = exc

    def _enqueue(self, items: list[EnqueueItem]) -> list[str]:
        deadline = time.monotonic() + 120
        while True:
            try:
                return self.producer.enqueue_many(items)
            except OperationalError:  # the restart: the same keys again, so nothing is enqueued twice
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.2)


class ChaosRun:
    """Drives one run on a started stack and private PostgreSQL."""

    def __init__(self, bench: Bench, pg: PrivatePostgres, size: ChaosSize, note: Callable[[str], None]) -> None:
        self.bench, self.pg, self.size, self.note = bench, pg, size, note
        self.redis = sync_client(bench.env["REDIS_URL"])
        self.events: list[dict[str, Any]] = []
        self.t0 = 0.0
        send_lease_s = bench.settings.send_lease_ms / 1000
        self.outages = Outages(self, send_lease_s) if size.outages else None
        self._mix: dict[str, str] = {}  # fault id -> kind, of the sparse fault mix in force
        self._mix_hits: Counter[str] = Counter()

    def run(self) -> dict[str, Any]:
        """Inject faults, produce, hit the stack on schedule, wait for everything to settle, check."""
        control = self.bench.emulator.control
        control.set_config(request_log_size=REQUEST_LOG_SIZE)
        control.reset()  # the log takes its new size
        self.resume_fault_mix()
        self.bench.start_workers(self.size.workers, self.size.concurrency)
        producer = LoadProducer(Producer(self.bench.engine, self.bench.settings), self.size)
        thread = threading.Thread(target=producer.run, name="chaos-producer", daemon=True)
        self.t0 = time.monotonic()
        thread.start()
        for at_s, event in schedule(self.size):
            time.sleep(max(0.0, self.t0 + at_s - time.monotonic()))
            self.note(f"{event} at {self.elapsed()} s")
            getattr(self.outages if self.outages and hasattr(self.outages, event) else self, event)()
        thread.join()
        if self.outages:
            self.outages.finish()
        if producer.error is not None:
            raise RuntimeError("the producer failed") from producer.error
        settled = self._settle(set(producer.ids))
        self.pause_fault_mix()
        hits = dict(self._mix_hits)
        evidence = self._evidence(set(producer.ids), hits)
        result = chaos_checks.check(evidence)
        result.update(events=self.events, settled_s=settled, producer_retries=producer.retries,
                      elapsed_s=self.elapsed(), recoveries=self._recoveries())
        if result["invariants"]["requests_inside_retry_after"]:
            result["retry_after_violations"] = [f for f in evidence.retry_after_flags
                                                if f.get("verdict") == "violation"]
        return result

    def pause_fault_mix(self) -> None:
        """Take the sparse fault rules out (their hits kept), so an outage's rule answers every request."""
        control = self.bench.emulator.control
        for f in control.faults():
            if f["id"] in self._mix:
                self._mix_hits[self._mix[f["id"]]] += int(f["hits"])
                control.remove_fault(f["id"])
        self._mix.clear()

    def resume_fault_mix(self) -> None:
        """Put the sparse fault rules (back) in force."""
        control = self.bench.emulator.control
        self._mix = {control.add_fault(**spec): spec["kind"] for spec in fault_specs()}

    def held_count(self, tenant_id: str) -> int:
        """The tenant's notifications held now."""
        with self.bench.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(_N.c.tenant_id == tenant_id, _N.c.state == "held"))
                       or 0)

    def breaker_interval_s(self) -> float:
        """The workers' probe interval."""
        return self.bench.settings.breaker_probe_interval_ms / 1000

    def _retry_after_flags(self) -> list[dict[str, Any]]:
        """Each request the emulator counted inside a Retry-After window, with the 429s of that mailbox
        in the ten minutes before it and the attempt rows of both (which worker, when the request left,
        how long until its answer was read): what `chaos_checks.judge_retry_after` decides by."""
        if not int(self.bench.emulator.control.counters().get("requests_inside_retry_after", 0)):
            return []
        log = self.bench.emulator.control.requests_log(route="sendMail")
        out = []
        for i, entry in enumerate(log):
            if not entry.get("inside_retry_after"):
                continue
            throttles = [e for e in log[:i] if e.get("mailbox") == entry.get("mailbox") and e.get("status") == 429
                         and e["time"] > entry["time"] - 600]
            out.append({"request": _brief(entry), "earlier_429s": [_brief(e) for e in throttles],
                        "attempts": self._attempts_by_crid([entry, *throttles])})
        return out

    def _attempts_by_crid(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        crids = [e.get("client_request_id") for e in entries]
        with self.bench.engine.connect() as conn:
            rows = conn.execute(select(_A.c.notification_id, _A.c.client_request_id, _A.c.worker, _A.c.started_at,
                                       _A.c.outcome, _A.c.http_status, _A.c.retry_after_s, _A.c.latency_ms)
                                .where(_A.c.client_request_id.in_(crids))).mappings().all()
        return [{**r, "started_at": _epoch(r["started_at"])} for r in rows]

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def kill(self) -> None:
        """SIGKILL the oldest live worker once it has sends in flight; start a replacement."""
        victim = next(p for p in self.bench.workers if p.poll() is None)
        in_flight = self.wait_in_flight(victim.pid, timeout_s=20)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        self.events.append({"event": "kill", "at_s": self.elapsed(), "pid": victim.pid, **in_flight})
        self.bench.start_workers(1, self.size.concurrency)

    def wait_in_flight(self, pid: int, timeout_s: float) -> dict[str, int]:
        """Wait until the worker holds rows whose send has started (a send mark, no outcome yet)."""
        deadline = time.monotonic() + timeout_s
        found = {"sending_rows": 0, "sends_started": 0}
        while time.monotonic() < deadline:
            try:
                with self.bench.engine.connect() as conn:
                    ids = list(conn.scalars(select(_N.c.id).where(
                        _N.c.state == "sending", _N.c.claimed_by.like(f"%:{pid}:%/%"))))  # host:pid:batch/epoch
            except OperationalError:
                ids = []
            marks = self.redis.mget([mark_key(i) for i in ids]) if ids else []
            started = sum(v is not None for v in marks)
            found = {"sending_rows": len(ids), "sends_started": started}
            if started:
                break
            time.sleep(0.02)
        return found

    def flushall(self) -> None:
        """FLUSHALL the Redis that holds the broker queue, tokens, throttles and send marks."""
        keys = int(self.redis.dbsize())
        self.redis.flushall()
        self.events.append({"event": "flushall", "at_s": self.elapsed(), "keys_lost": keys})

    def fail_over_redis(self) -> None:
        """SIGKILL the Redis master, wait for the sentinels to promote the replica, then for the first
        notification enqueued after that to be sent (so dispatcher, broker and worker all went on)
        by the same worker processes (none restarted)."""
        assert self.bench.sentinel is not None
        at, workers = self.elapsed(), self._live_workers()
        failover = self.bench.sentinel.fail_over()
        promoted_at, promoted_wall = time.monotonic(), datetime.now(UTC)
        resumed_after_s = None
        while time.monotonic() < promoted_at + RESUME_TIMEOUT_S:
            if self._sent_count(created_since=promoted_wall):
                resumed_after_s = round(time.monotonic() - promoted_at, 2)
                break
            time.sleep(0.05)
        self.events.append({"event": "redis_failover", "at_s": at, **failover, "resumed_after_s": resumed_after_s,
                            "workers": len(workers), "same_workers": workers == self._live_workers()})

    def _live_workers(self) -> list[int]:
        return [p.pid for p in self.bench.workers if p.poll() is None]

    def _sent_count(self, created_since: datetime) -> int:
        try:
            with self.bench.engine.connect() as conn:
                return int(conn.scalar(select(func.count()).where(
                    _N.c.state == "sent", _N.c.created_at >= created_since)) or 0)
        except OperationalError:
            return 0

    def restart_postgres(self) -> None:
        """Stop PostgreSQL (fast: every connection is cut), keep it down, start it again."""
        at = self.elapsed()
        down_s = self.pg.restart(self.size.pg_down_s)
        self.events.append({"event": "restart_postgres", "at_s": at, "down_s": round(down_s, 2)})

    def _settle(self, ids: set[str]) -> float | None:
        deadline = time.monotonic() + self.size.settle_timeout_s
        while time.monotonic() < deadline:
            try:
                if self.bench.terminal_count() >= len(ids):
                    return self.elapsed()
            except OperationalError:  # a pooled connection the PostgreSQL restart ended: the next one is new
                pass
            time.sleep(0.5)
        return None

    def _evidence(self, expected: set[str], hits: dict[str, int]) -> chaos_checks.Evidence:
        with self.bench.engine.connect() as conn:
            rows = [chaos_checks.Row(*r) for r in conn.execute(select(
                _N.c.id, _N.c.state, _N.c.possible_duplicate, _N.c.last_error_code))]
            attempts = [tuple(a) for a in conn.execute(select(_A.c.notification_id, _A.c.outcome, _A.c.error_code)
                                                       .order_by(_A.c.id))]
            held_rows = {r.id: (r.state, r.possible_duplicate) for r in conn.execute(select(
                _N.c.id, _N.c.state, _N.c.possible_duplicate).where(_N.c.tenant_id == HELD_TENANT))}
            holds = int(conn.scalar(select(func.count()).where(_E.c.tenant_id == HELD_TENANT,
                                                                _E.c.kind == HELD_EVENT)) or 0)
        control = self.bench.emulator.control
        outbox = chaos_checks.outbox_ids(control.outbox())
        evidence = chaos_checks.Evidence(expected, rows, attempts, outbox, control.counters(), hits,
                                         retry_after_flags=self._retry_after_flags(),
                                         recheck_ms=self.bench.settings.mailbox_block_recheck_ms)
        if self.outages is not None:
            evidence.outages = {**held_tenant_evidence(outbox, held_rows), "holds_placed": holds,
                                "probe_excess": sum(int(e.get("probe_excess", 0)) for e in self.events)}
        return evidence

    def _recoveries(self) -> dict[str, int]:
        """What the sweepers logged: rows requeued (never sent), made ambiguous (maybe sent) and
        recorded sent (their send mark said Graph had accepted them)."""
        total = {"requeued": 0, "ambiguous": 0, "sent": 0}
        for log in self.bench.tmp.glob("worker*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "sweeper.recovered" in line:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    for k in total:
                        total[k] += int(entry.get(k, 0))
        return total


def _epoch(at: datetime | None) -> float | None:
    """Seconds since the epoch; SQLite gives the stored UTC time back without its zone."""
    if at is None:
        return None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _brief(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("time", "sent_at", "status", "mailbox", "client_request_id", "duration_ms")
    return {k: entry.get(k) for k in keys}


def run(size: ChaosSize, note: Callable[[str], None] = lambda _: None,
        logs_to: Path | None = None) -> dict[str, Any]:
    """One chaos run from start to report (a dict; `ok` False when an invariant failed); the worker
    logs are copied to `logs_to` when given."""
    env = {**CHAOS_ENV, **size.settings}
    with private_postgres() as pg, bench_stack(tenants=size.tenants, latency_ms=size.latency_ms,
                                               pg_admin_url=pg.admin_url, extra_env=env, seed=size.seed,
                                               sentinel=size.sentinel) as bench:
        note(f"stack up: PostgreSQL on port {pg.port}, emulator at {bench.emulator.base_url}")
        result = ChaosRun(bench, pg, size, note).run()
        if logs_to is not None:
            logs_to.mkdir(parents=True, exist_ok=True)
            for log in bench.tmp.glob("worker*.log"):
                shutil.copy(log, logs_to / log.name)
    result["size"] = asdict(size)
    result["settings"] = env
    return result


_TITLES = {
    "not_terminal": "every notification settled (sent, failed or ambiguous)",
    "lost": "every notification recorded sent is in the outbox",
    "unflagged_duplicates": "every duplicate in the outbox is flagged possible_duplicate with an ambiguous attempt",
    "unflagged_ambiguous": "every ambiguous notification is flagged possible_duplicate",
    "sent_but_recorded_failed": "no notification recorded failed is in the outbox unflagged",
    "stray_copies": "no outbox message without a notification of the run",
    "requests_inside_retry_after": "no request reached a mailbox inside its Retry-After window once its worker knew",
    "failed_not_permanent": "no notification failed unless by a permanent code or a hold's expiry",
    "probes_over_one_per_interval": "at most one request per probe interval reached Graph while its breaker was open",
    "held_tenant_not_sent_once": "the held tenant's notifications were all sent after the fix, once each",
}


def text_report(result: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    size = result["size"]
    events = result["events"]
    kills = [e for e in events if e["event"] == "kill"]
    lines = [
        f"tenantmail chaos: {size['notifications']} notifications, {size['tenants']} tenants, "
        f"{size['workers']} workers x {size['concurrency']} threads, Graph latency {size['latency_ms']:.0f} ms, "
        f"enqueued over {size['duration_s']:.0f} s",
        f"kills: {len(kills)} SIGKILLs at " + ", ".join(
            f"{e['at_s']} s ({e['sends_started']} sends in flight)" for e in kills),
    ]
    for e in events:
        if e["event"] == "flushall":
            lines.append(f"flushes: 1 Redis FLUSHALL at {e['at_s']} s ({e['keys_lost']} keys lost)")
        elif e["event"] == "restart_postgres":
            lines.append(f"restarts: 1 PostgreSQL restart at {e['at_s']} s ({e['down_s']} s without a database)")
        elif e["event"] == "redis_failover":
            lines.append(_failover_line(e))
    if "outages" in result:
        lines += _outage_lines(events, result["outages"])
    kinds = ", ".join(f"{k} {n}" for k, n in result["faults_by_kind"].items())
    lines += [
        f"faults injected: {result['faults_injected']} of {result['send_requests']} sendMail requests ({kinds}); "
        f"429 answered in all {result['throttled_429']}",
        f"retry-after: {result['requests_in_flight_at_429']} requests arrived within the emulator's grace of a 429, "
        f"{result['requests_flagged_inside_retry_after']} after it, of which {result['requests_crossing_a_429']} "
        f"left their worker before it could know of the 429 (crossed on the wire)",
        f"outcomes: {', '.join(f'{k} {n}' for k, n in result['states'].items())}; "
        f"flagged possible_duplicate {result['flagged_possible_duplicate']}; failed codes {result['failed_codes']}",
        f"attempts: {result['attempts']} ({', '.join(f'{k} {n}' for k, n in result['attempts_by_outcome'].items())});"
        f" retries {result['retries']}; sweeper requeued {result['recoveries']['requeued']} never-sent rows, "
        f"made {result['recoveries']['ambiguous']} ambiguous and recorded {result['recoveries']['sent']} sent; "
        f"producer retries {result['producer_retries']}",
        f"outbox: {result['outbox_messages']} messages; duplicates {result['duplicates']} "
        f"({result['duplicate_copies']} extra copies, by cause {result['duplicates_by_cause']}); "
        f"ambiguous {result['ambiguous']}; "
        f"lost {result['invariants']['lost']}",
        f"settled after {result['settled_s']} s" if result["settled_s"] is not None else "DID NOT SETTLE in time",
        "invariants:",
    ]
    lines += [f"  [{'ok' if n == 0 else 'FAIL'}] {_TITLES[name]} ({name} = {n})"
              for name, n in result["invariants"].items()]
    lines.append(f"result: {'PASS' if result['ok'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def _outage_lines(events: list[dict[str, Any]], outages: dict[str, int]) -> list[str]:
    at = {e["event"]: e for e in events}
    lines = []
    if (start := at.get("graph_outage_start")) and (end := at.get("graph_outage_end")):
        lines.append(f"graph outage: every sendMail 503 from {start['at_s']} s to {end['at_s']} s; breaker open "
                     f"for the last {end['breaker_open_s']} s, {end['requests_while_open']} requests reached "
                     f"Graph then (one probe per interval allows {end['probes_allowed']})")
    if (start := at.get("token_outage_start")) and (end := at.get("token_outage_end")):
        lines.append(f"token outage: token endpoint 503 from {start['at_s']} s to {end['at_s']} s "
                     f"({end['token_requests_refused']} token requests refused)")
    if e := at.get("stop_redis"):
        lines.append(f"redis stopped (SHUTDOWN SAVE, not flushed) at {e['at_s']} s for {e['down_s']} s")
    if (stop := at.get("sigstop")) and (cont := at.get("sigcont")):
        lines.append(f"worker SIGSTOPped at {stop['at_s']} s ({stop['sends_started']} sends in flight), "
                     f"SIGCONT at {cont['at_s']} s")
    if (revoke := at.get("revoke_secret")) and (fix := at.get("fix_secret")):
        lines.append(f"secret of {revoke['tenant']} revoked at {revoke['at_s']} s, fixed at {fix['at_s']} s "
                     f"(version {fix['version']}; {fix['held_at_fix']} held then; holds placed "
                     f"{outages['holds_placed']}); {outages['held_tenant_notifications']} notifications of it")
    return lines


def _failover_line(e: dict[str, Any]) -> str:
    resumed = (f"the first notification enqueued after that was sent {e['resumed_after_s']} s later"
               if e["resumed_after_s"] is not None
               else f"NO DELIVERY within {RESUME_TIMEOUT_S:.0f} s")
    same = "the same" if e["same_workers"] else "NOT the same"
    return (f"failover: Redis master SIGKILLed at {e['at_s']} s, replica promoted after {e['promoted_after_s']} s; "
            f"{resumed} on {same} {e['workers']} worker processes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tenantmail chaos`."""
    d = ChaosSize()
    parser.add_argument("--notifications", type=int, default=d.notifications)
    parser.add_argument("--tenants", type=int, default=d.tenants)
    parser.add_argument("--duration-s", type=float, default=d.duration_s, help="enqueue spread over this long")
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--latency-ms", type=float, default=d.latency_ms, help="emulator Graph latency")
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--pg-down-s", type=float, default=d.pg_down_s, help="how long PostgreSQL stays down")
    parser.add_argument("--seed", type=int, default=None, help="emulator seed: fault rolls repeat")
    parser.add_argument("--settle-timeout-s", type=float, default=d.settle_timeout_s)
    parser.add_argument("--small", action="store_true", help="the CI size: 1,500 notifications, 30 tenants, 30 s")
    parser.add_argument("--sentinel", action="store_true",
                        help="Redis as a Sentinel group (master, replica, 3 sentinels); its master is killed halfway")
    parser.add_argument("--outages", action="store_true",
                        help="also: Graph 503 for --graph-outage-s, token endpoint 503, Redis stopped, a worker "
                             "SIGSTOPped past its lease, a tenant's secret revoked and fixed (--small: CI size)")
    parser.add_argument("--graph-outage-s", type=float, default=d.graph_outage_s)
    parser.add_argument("--token-outage-s", type=float, default=d.token_outage_s)
    parser.add_argument("--redis-down-s", type=float, default=d.redis_down_s)
    parser.add_argument("--secret-fix-after-s", type=float, default=d.secret_fix_after_s)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a TENANTMAIL_ setting for the workers, e.g. --set SEND_LEASE_MS=20000")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the text")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON report is written")


def size_from_args(args: argparse.Namespace) -> ChaosSize:
    """The run's size: --small's, else the options'."""
    settings = {f"TENANTMAIL_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.set)}
    if args.small:
        base = asdict(OUTAGES_SMALL if args.outages else SMALL)
        return ChaosSize(**{**base, "seed": args.seed, "settings": {**base["settings"], **settings},
                            "sentinel": args.sentinel})
    return ChaosSize(args.notifications, args.tenants, args.duration_s, args.workers, args.concurrency,
                     args.latency_ms, args.kills, args.pg_down_s, args.seed, args.settle_timeout_s, settings,
                     sentinel=args.sentinel, outages=args.outages, graph_outage_s=args.graph_outage_s,
                     token_outage_s=args.token_outage_s, redis_down_s=args.redis_down_s,
                     secret_fix_after_s=args.secret_fix_after_s)


def main(args: argparse.Namespace) -> int:
    """`tenantmail chaos`: run, print the report, write it as JSON; 1 when an invariant failed."""
    size = size_from_args(args)
    started = datetime.now(UTC)
    stem = f"chaos-{started.strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
    result = run(size, lambda msg: print(f"[chaos] {msg}", file=sys.stderr, flush=True), args.out / f"{stem}-logs")
    result["command"] = "tenantmail chaos " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    result["started_at"] = started.isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.write(json.dumps(result, default=str) + "\n" if args.json else text_report(result))
    print(f"wrote {path} (worker logs in {stem}-logs/)", file=sys.stderr)
    return 0 if result["ok"] else 1
