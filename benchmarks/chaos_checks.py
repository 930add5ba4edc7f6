"""What a chaos run must show afterwards, computed from the database and the emulator's outbox.

Invariants (each a count that must be 0):
- `not_terminal`: notifications not sent, failed or ambiguous (and enqueued ones missing from the table);
- `lost`: notifications recorded `sent` with no copy in the outbox;
- `unflagged_duplicates`: more than one copy in the outbox, but not flagged `possible_duplicate`
  with an ambiguous attempt on record (a 504, a timeout, a reset, or a worker lost mid-send);
- `unflagged_ambiguous`: in state `ambiguous` without the `possible_duplicate` flag;
- `sent_but_recorded_failed`: a copy in the outbox of a notification recorded `failed` and never
  flagged (the mail went out and the activity table says it did not);
- `stray_copies`: outbox messages whose X-Tenantmail-Notification-Id is no notification of the run;
- `requests_inside_retry_after`: sendMail requests that reached a mailbox inside its Retry-After window
  after their sender knew of it (`judge_retry_after`): the emulator flags every request that arrives
  inside a window more than its grace after the 429 left; a flagged request that left its worker before
  that worker had read the 429 (or, for a 429 another worker read, before the block had been in Redis
  for the re-check interval) crossed the 429 on the wire and is counted apart, as
  `requests_crossing_a_429`. A flagged request without the evidence to judge it counts as a violation;
- `failed_not_permanent`: notifications failed although their last attempt was transient (a 5xx, a
  connection error, a 429: only a permanent code or a hold's expiry may fail one), or with no attempt;
With the outages (benchmarks.chaos_outages), also:
- `probes_over_one_per_interval`: sendMail requests while the Graph breaker was open beyond one per
  probe interval;
- `held_tenant_not_sent_once`: notifications of the tenant whose secret was revoked and fixed that are
  not sent, or not exactly once (a flagged duplicate excepted).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.models import TERMINAL_STATES

HEADER = "X-Tenantmail-Notification-Id"
AMBIGUOUS_OUTCOME = "ambiguous"
PERMANENT_OUTCOMES = frozenset({"failed", "token_error"})  # attempt labels of permanent errors


@dataclass(frozen=True)
class Row:
    """What the check needs of one notification."""

    id: str
    state: str
    possible_duplicate: bool
    last_error_code: str | None


@dataclass
class Evidence:
    """Everything collected after the run."""

    expected_ids: set[str]
    rows: Sequence[Row]
    attempts: Sequence[tuple[str, str, str | None]]  # (notification id, outcome, error code)
    outbox_ids: Sequence[str | None]
    emulator_counters: dict[str, Any]
    fault_hits: dict[str, int] = field(default_factory=dict)
    outages: dict[str, int] | None = None  # what the outages left (benchmarks.chaos_outages), when they ran
    # each request the emulator flagged inside a Retry-After window, with the earlier 429s of its mailbox
    # and the attempt rows of all of them (benchmarks.chaos.Chaos._retry_after_flags)
    retry_after_flags: list[dict[str, Any]] = field(default_factory=list)
    recheck_ms: int = 20  # TENANTMAIL_MAILBOX_BLOCK_RECHECK_MS of the run's workers


def outbox_ids(outbox: Iterable[dict[str, Any]]) -> list[str | None]:
    """The notification id each accepted message carried (None when it had no such header)."""
    return [(m.get("x_headers") or {}).get(HEADER) for m in outbox]


def check(ev: Evidence) -> dict[str, Any]:
    """Counts and invariants of a finished run; `invariants` maps each name to its violation count."""
    copies = Counter(ev.outbox_ids)
    by_id = {r.id: r for r in ev.rows}
    ambiguous_attempts = {nid for nid, outcome, _ in ev.attempts if outcome == AMBIGUOUS_OUTCOME}
    states = Counter(r.state for r in ev.rows)
    duplicates = [nid for nid, n in copies.items() if n > 1 and nid is not None]

    def flagged(nid: str) -> bool:
        row = by_id.get(nid)
        return row is not None and row.possible_duplicate and nid in ambiguous_attempts

    invariants = {
        "not_terminal": sum(s not in TERMINAL_STATES for s in (r.state for r in ev.rows))
        + len(ev.expected_ids - by_id.keys()),
        "lost": sum(1 for r in ev.rows if r.state == "sent" and copies[r.id] == 0),
        "unflagged_duplicates": sum(1 for nid in duplicates if not flagged(nid)),
        "unflagged_ambiguous": sum(1 for r in ev.rows if r.state == "ambiguous" and not r.possible_duplicate),
        "sent_but_recorded_failed": sum(1 for r in ev.rows
                                        if r.state == "failed" and copies[r.id] and not flagged(r.id)),
        "stray_copies": sum(n for nid, n in copies.items() if nid not in by_id),
        "requests_inside_retry_after": 0,
        "failed_not_permanent": _failed_not_permanent(ev),
    }
    flagged_count = int(ev.emulator_counters.get("requests_inside_retry_after", 0))
    verdicts = Counter(judge_retry_after(flag, ev.recheck_ms) for flag in ev.retry_after_flags)
    unjudged = max(0, flagged_count - len(ev.retry_after_flags))  # the request log no longer held them
    invariants["requests_inside_retry_after"] = verdicts["violation"] + unjudged
    if ev.outages is not None:
        invariants["probes_over_one_per_interval"] = int(ev.outages.get("probe_excess", 0))
        invariants["held_tenant_not_sent_once"] = int(ev.outages.get("held_tenant_not_sent_once", 0))
    result = {"invariants": invariants, "ok": not any(invariants.values()), **_counts(ev, states, copies, duplicates),
              "requests_flagged_inside_retry_after": flagged_count,
              "requests_crossing_a_429": verdicts["crossed"]}
    if ev.outages is not None:
        result["outages"] = dict(ev.outages)
    return result


def judge_retry_after(flag: dict[str, Any], recheck_ms: int) -> str:
    """"violation" or "crossed" for one request the emulator flagged inside a Retry-After window.

    A worker knows of a 429 once it has read the answer: the attempt row of the 429 says when that request
    left (`started_at`, the moment its send gate let it go) and how long until its answer was read
    (`latency_ms`). The worker process blocks the mailbox in memory as soon as it has the answer, and
    every request passes its send gate (transport.send_gate) just before it is written, so a request of
    that process that left afterwards is a violation. Another worker learns of the block through Redis, and its gate
    asks Redis again only after `recheck_ms`: a request of another worker is a violation when it left
    more than `recheck_ms` after the 429 was read (as if Redis had heard of it at once, the strict
    reading). A 429 counts only while its Retry-After lasts. Without the flagged request's own attempt
    row there is nothing to show it crossed: a violation.
    """
    crid = flag["request"].get("client_request_id")
    attempts = {a.get("client_request_id"): a for a in flag.get("attempts", [])}
    mine = attempts.get(crid)
    if mine is None or mine.get("started_at") is None:
        return "violation"
    left = float(mine["started_at"])
    for q in flag.get("earlier_429s", []):
        throttle = attempts.get(q.get("client_request_id"))
        if throttle is None or throttle.get("started_at") is None or throttle.get("http_status") != 429:
            continue  # no worker recorded reading it (it died first): no one could act on it
        read = float(throttle["started_at"]) + float(throttle.get("latency_ms") or 0) / 1000
        until = read + float(throttle.get("retry_after_s") or 0)
        known = read if _process(throttle) == _process(mine) else read + recheck_ms / 1000
        if known < left < until:
            return "violation"
    return "crossed"


def _process(attempt: dict[str, Any]) -> str:
    """host:pid of the worker that made an attempt (its `worker` is the batch's claim, host:pid:batch/epoch);
    a process's batches share its in-memory mailbox blocks."""
    return ":".join(str(attempt.get("worker") or "").split(":")[:2])


def _failed_not_permanent(ev: Evidence) -> int:
    """Failed rows whose last attempt was not a permanent error (so they failed by an attempt count or
    the maximum age, during a run far shorter than it)."""
    last: dict[str, tuple[str, str | None]] = {}
    for nid, outcome, code in ev.attempts:  # in the order they were recorded
        last[nid] = (outcome, code)
    return sum(1 for r in ev.rows if r.state == "failed"
               and (r.id not in last or last[r.id][0] not in PERMANENT_OUTCOMES or last[r.id][1] == "MaxAgeExceeded"))


def _counts(ev: Evidence, states: Counter[str], copies: Counter[str | None], duplicates: list[str]) -> dict[str, Any]:
    outcomes = Counter(outcome for _, outcome, _ in ev.attempts)
    causes = {nid: code for nid, outcome, code in ev.attempts if outcome == AMBIGUOUS_OUTCOME}
    per_row = Counter(nid for nid, _, _ in ev.attempts)
    counters = ev.emulator_counters
    return {
        "notifications": len(ev.expected_ids),
        "states": dict(sorted(states.items())),
        "failed_codes": dict(Counter(r.last_error_code for r in ev.rows if r.state == "failed")),
        "flagged_possible_duplicate": sum(r.possible_duplicate for r in ev.rows),
        "ambiguous": states.get("ambiguous", 0),
        "duplicates": len(duplicates),
        "duplicate_copies": sum(copies[nid] - 1 for nid in duplicates),
        "duplicates_by_cause": dict(Counter(causes.get(nid) or "none" for nid in duplicates)),
        "outbox_messages": len(ev.outbox_ids),
        "attempts": len(ev.attempts),
        "attempts_by_outcome": dict(sorted(outcomes.items())),
        "retries": sum(n - 1 for n in per_row.values()),
        "worker_lost_attempts": sum(1 for _, _, code in ev.attempts if code == "WorkerLost"),
        "faults_injected": int(counters.get("faults_injected", 0)),
        "faults_by_kind": dict(sorted(ev.fault_hits.items())),
        "send_requests": int(counters.get("send_requests", 0)),
        "accepted_by_emulator": int(counters.get("accepted", 0)),
        "throttled_429": int(counters.get("throttled_429", 0)),
        "throttled_by_reason": dict(counters.get("throttled_by_reason", {})),
        "requests_in_flight_at_429": int(counters.get("requests_in_flight_at_429", 0)),
        "max_mailbox_concurrency": max(counters.get("max_concurrency", {}).values(), default=0),
        "token_requests": sum(counters.get("token_requests", {}).values()),
    }
