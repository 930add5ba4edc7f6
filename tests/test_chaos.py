"""The chaos run at CI size (benchmarks/chaos.py), its checks, and the outage behaviour it found."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import chaos
from benchmarks.chaos_checks import Evidence, Row, check, judge_retry_after
from benchmarks.private_pg import postgres_bin_dir
from shared.db import make_engine
from shared.settings import Settings
from tenantmail.embedded import free_port
from tests.conftest import IN_CI
from worker.store import renew_leases


def _need_private_postgres() -> None:
    if postgres_bin_dir() is None:
        if IN_CI:
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are missing; CI must provide them")
        pytest.skip("no PostgreSQL server binaries for a private instance")


@pytest.mark.chaos
@pytest.mark.timeout(480)
def test_chaos_run_loses_nothing_duplicates_only_flagged_rows_and_obeys_retry_after() -> None:
    _need_private_postgres()
    size = chaos.SMALL  # 1,500 notifications, 30 tenants, enqueued over 30 s

    # when: three SIGKILLs, a FLUSHALL and a PostgreSQL restart hit the run under the fault mix
    result = chaos.run(size, print)

    # then: every invariant holds ...
    report = chaos.text_report(result)
    print(report)
    assert result["ok"], report + json.dumps(result.get("retry_after_violations", []), default=str)[:4000]
    assert result["states"].get("sent", 0) >= 0.99 * size.notifications
    # ... and the run really was hit: each kill caught sends in flight, Redis lost keys, PostgreSQL was down
    kills = [e for e in result["events"] if e["event"] == "kill"]
    assert len(kills) == 3 and all(k["sends_started"] > 0 for k in kills), kills
    flush, = (e for e in result["events"] if e["event"] == "flushall")
    restart, = (e for e in result["events"] if e["event"] == "restart_postgres")
    assert flush["keys_lost"] > 0 and restart["down_s"] >= size.pg_down_s
    assert set(result["faults_by_kind"]) == {"503", "429", "504_after_commit", "reset"}
    assert all(n > 0 for n in result["faults_by_kind"].values()), result["faults_by_kind"]
    assert result["duplicates"] > 0  # the 504s after commit: the duplicate check had something to judge
    assert result["settled_s"] is not None


@pytest.mark.chaos
@pytest.mark.timeout(480)
def test_chaos_run_with_outages_fails_nothing_probes_once_per_interval_and_sends_the_held_tenant_once() -> None:
    _need_private_postgres()
    size = chaos.OUTAGES_SMALL  # 800 notifications, 20 tenants, 40 s; Graph down 20 s, probes every 2 s

    # when: Graph answers 503 to everything, the token endpoint 503, Redis stops, a worker is SIGSTOPped
    # past its send lease and a tenant's secret is revoked then fixed (besides a kill, a FLUSHALL and a
    # PostgreSQL restart)
    result = chaos.run(size, print)

    # then: every invariant holds, the new ones included ...
    report = chaos.text_report(result)
    print(report)
    assert result["ok"], report + json.dumps(result.get("retry_after_violations", []), default=str)[:4000]
    assert {"failed_not_permanent", "probes_over_one_per_interval", "held_tenant_not_sent_once"} <= set(
        result["invariants"])
    # ... and each outage happened: the Graph breaker opened, the tenant was held before its fix, Redis was
    # down, the stopped worker had sends in flight and stayed stopped past its send lease
    events = {e["event"]: e for e in result["events"]}
    assert events["graph_outage_end"]["breaker_open_s"] is not None, events["graph_outage_end"]
    assert result["outages"]["holds_placed"] >= 1 and events["fix_secret"]["held_at_fix"] > 0
    assert events["stop_redis"]["down_s"] >= size.redis_down_s
    assert events["sigstop"]["sends_started"] > 0
    lease_s = chaos.CHAOS_ENV["TENANTMAIL_SEND_LEASE_MS"]
    assert events["sigcont"]["at_s"] - events["sigstop"]["at_s"] > int(lease_s) / 1000
    assert result["settled_s"] is not None


def _evidence(**overrides: object) -> Evidence:
    base: dict[str, object] = dict(
        expected_ids={"a", "b", "c"},
        rows=[Row("a", "sent", False, None), Row("b", "sent", True, None), Row("c", "failed", False, "ErrorX")],
        attempts=[("a", "sent", None), ("b", "ambiguous", "UnknownError"), ("b", "sent", None), ("c", "failed", "X")],
        outbox_ids=["a", "b", "b"],
        emulator_counters={"requests_inside_retry_after": 0},
    )
    base.update(overrides)
    return Evidence(**base)  # type: ignore[arg-type]


def test_chaos_checks_pass_a_clean_run_with_a_flagged_duplicate() -> None:
    result = check(_evidence())
    assert result["ok"] and result["duplicates"] == 1 and result["retries"] == 1


@pytest.mark.parametrize(("change", "invariant"), [
    ({"outbox_ids": ["b", "b"]}, "lost"),
    ({"outbox_ids": ["a", "a", "b"]}, "unflagged_duplicates"),
    ({"attempts": [("b", "sent", None)]}, "unflagged_duplicates"),  # flagged, but no ambiguous attempt
    ({"outbox_ids": ["a", "b", "c"]}, "sent_but_recorded_failed"),
    ({"outbox_ids": ["a", "b", "zzz"]}, "stray_copies"),
    ({"outbox_ids": ["a", "b", None]}, "stray_copies"),
    ({"rows": [Row("a", "sent", False, None), Row("b", "sending", True, None)]}, "not_terminal"),
    ({"rows": [Row("a", "sent", False, None), Row("b", "ambiguous", False, None),
               Row("c", "failed", False, None)], "outbox_ids": ["a"]}, "unflagged_ambiguous"),
    ({"emulator_counters": {"requests_inside_retry_after": 2}}, "requests_inside_retry_after"),
    ({"attempts": [("a", "sent", None), ("b", "ambiguous", "UnknownError"), ("b", "sent", None),
                   ("c", "failed", "X"), ("c", "retry", "ServiceUnavailable")]}, "failed_not_permanent"),
    ({"outages": {"probe_excess": 3}}, "probes_over_one_per_interval"),
    ({"outages": {"held_tenant_not_sent_once": 1}}, "held_tenant_not_sent_once"),
])
def test_chaos_checks_count_each_kind_of_violation(change: dict[str, object], invariant: str) -> None:
    result = check(_evidence(**change))
    assert not result["ok"]
    assert result["invariants"][invariant] > 0, result["invariants"]


def _flag(left: float, *, worker: str = "1", own_row: bool = True) -> dict[str, object]:
    """A request flagged inside a Retry-After window that leaves process `worker` (a pid) at `left`; the 429
    before it left process 1 (another batch) at 100.0 and was read 50 ms later, with Retry-After 2 s."""
    attempts = [{"client_request_id": "q", "worker": "h:1:b1/0", "started_at": 100.0, "latency_ms": 50.0,
                 "http_status": 429, "retry_after_s": 2.0}]
    if own_row:
        attempts.append({"client_request_id": "r", "worker": f"h:{worker}:b2/0", "started_at": left, "latency_ms": 40.0,
                         "http_status": 202, "retry_after_s": None})
    return {"request": {"client_request_id": "r"}, "earlier_429s": [{"client_request_id": "q"}],
            "attempts": attempts}


@pytest.mark.parametrize(("flag", "verdict"), [
    (_flag(100.049), "crossed"),  # left before its own worker read the 429
    (_flag(100.051), "violation"),  # its worker had read it
    (_flag(100.060, worker="2"), "crossed"),  # another worker, inside the re-check interval
    (_flag(100.071, worker="2"), "violation"),  # another worker, past it
    (_flag(102.100), "crossed"),  # the Retry-After was over
    (_flag(100.049, own_row=False), "violation"),  # nothing shows when it left
])
def test_chaos_judges_a_flagged_request_by_what_its_worker_knew_when_it_left(flag: dict[str, object],
                                                                            verdict: str) -> None:
    assert judge_retry_after(flag, recheck_ms=20) == verdict
    result = check(_evidence(emulator_counters={"requests_inside_retry_after": 1}, retry_after_flags=[flag]))
    assert result["invariants"]["requests_inside_retry_after"] == (verdict == "violation")
    assert result["requests_crossing_a_429"] == (verdict == "crossed")


def test_chaos_fault_rules_give_each_kind_its_share_of_requests() -> None:
    specs = chaos.fault_specs()
    left, shares = 1.0, {}
    for spec in specs:  # the emulator tries the rules in order; the first that fires answers
        shares[spec["kind"]] = left * spec["probability"]
        left *= 1 - spec["probability"]
    assert shares == pytest.approx(dict(chaos.FAULT_MIX))
    assert next(s for s in specs if s["kind"] == "429")["retry_after"] == {"min_s": 1.0, "max_s": 3.0}
    assert math.isclose(left, 0.90)


def test_chaos_schedule_spreads_three_kills_around_the_flush_and_the_restart() -> None:
    events = chaos.schedule(chaos.ChaosSize(duration_s=100))
    assert events == [(15.0, "kill"), (30.0, "flushall"), (45.0, "kill"), (60.0, "restart_postgres"),
                      (75.0, "kill")]


def test_renew_leases_reports_an_unreachable_database_instead_of_ending_the_batch() -> None:
    engine = make_engine(Settings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none"))
    try:
        assert renew_leases(engine, ["x"], "host:1/e", 10_000) is False
    finally:
        engine.dispose()


@pytest.mark.chaos
@pytest.mark.timeout(480)
def test_chaos_run_survives_a_redis_sentinel_failover_without_restarting_workers() -> None:
    _need_private_postgres()
    size = chaos.SENTINEL_SMALL  # 800 notifications, 20 tenants, 20 s; Redis a Sentinel group

    # when: the Redis master is SIGKILLed halfway (besides a kill, a FLUSHALL and a PostgreSQL restart)
    result = chaos.run(size, print)

    # then: the replica was promoted, new notifications went out on the same workers, and every invariant holds
    report = chaos.text_report(result)
    print(report)
    failover, = (e for e in result["events"] if e["event"] == "redis_failover")
    assert failover["new_master_port"] != failover["old_master_port"]
    assert failover["resumed_after_s"] is not None and failover["same_workers"], failover
    assert result["ok"], report + json.dumps(result.get("retry_after_violations", []), default=str)[:4000]
    assert result["settled_s"] is not None
