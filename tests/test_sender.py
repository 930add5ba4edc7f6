"""worker.delivery.Sender in process: a real Runtime (event loop, aiohttp, Redis pools), the TLS
emulator in a thread, a real Redis and database. Faults are injected at the emulator; Redis goes
away by stopping its server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.models import DeliveryAttempt, Notification, State
from shared.producer import Producer
from shared.providers import save_graph_provider
from shared.resend import resend
from shared.settings import Settings
from tenantmail.embedded import start_redis
from tests.stack import new_encryption_key, wait_until
from worker.batch import deliver_batch
from worker.delivery import Sender
from worker.runtime import Runtime
from worker.sendmarks import mark_key
from worker.store import RowOutcome, claim, write_outcomes
from worker.throttle import MailboxThrottle

_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
TENANT = "acme"
CLAIMED_BY = "test-host:1/epoch"


@dataclass
class Harness:
    """One worker process's runtime on this test's database, Redis and emulator."""

    runtime: Runtime
    emulator: Any
    producer: Producer

    def enqueue(self, n: int) -> list[str]:
        return self.producer.enqueue_many([(TENANT, {"to": [f"user{i}@example.org"], "subject": f"Review {i}",
                                                     "body": "Please review."}) for i in range(n)])

    def send(self, ids: list[str]) -> list[RowOutcome]:
        """Claim the rows, send them with a Sender, write the outcomes: a batch without the task."""
        rt = self.runtime
        rows = claim(rt.engine, ids, CLAIMED_BY, rt.settings.send_lease_ms, int(time.time() * 1000))
        sender = Sender(rt.graph, rt.tokens, rt.throttle, rt.marks, rt.settings, rt.smtp)
        outcomes = rt.run(sender.send_all(rows, rt.resolver.resolve_many(r.tenant_id for r in rows)), timeout_s=60)
        write_outcomes(rt.engine, outcomes, CLAIMED_BY)
        return outcomes

    def rows(self, ids: list[str]) -> list[Any]:
        with self.runtime.engine.connect() as conn:
            found = {r.id: r for r in conn.execute(select(_N).where(_N.c.id.in_(ids)))}
        return [found[i] for i in ids]

    def attempts(self, nid: str) -> list[Any]:
        with self.runtime.engine.connect() as conn:
            return list(conn.execute(select(_A).where(_A.c.notification_id == nid).order_by(_A.c.attempt_no)))

    def outbox_ids(self) -> list[str]:
        return [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in self.emulator.outbox()]


@pytest.fixture
def make_harness(database_url: str, emulator: Any, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Factory of Harnesses for a Redis URL and settings overrides; closes their runtimes."""
    runtimes: list[Runtime] = []

    def factory(redis_url: str, **overrides: Any) -> Harness:
        values: dict[str, Any] = dict(
            database_url=database_url, encryption_keys=new_encryption_key(), authority_override=emulator.base_url,
            graph_base_override=emulator.graph_base_url, ca_bundle=str(emulator.ca_path), http_timeout_s=20.0,
            state_dir=tmp_path / "state", backoff_base_ms=50, backoff_cap_ms=200, slot_wait_max_ms=200,
            slot_requeue_ms=250)
        values.update(overrides)
        settings = Settings(**values)
        runtime = Runtime(settings, redis_url)
        runtimes.append(runtime)
        save_graph_provider(runtime.engine, runtime.box, TENANT, sender_address=DEMO_SENDER,
                            azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
        return Harness(runtime, emulator, Producer(runtime.engine, Settings(fair_spacing_ms=1)))

    yield factory
    for rt in runtimes:
        rt.close()


def test_sender_requeues_a_lane_that_gets_no_slot_without_spending_attempts(make_harness: Any,
                                                                           redis_url: str) -> None:
    # given: another process holds every slot of the mailbox
    h = make_harness(redis_url)
    ids = h.enqueue(3)
    _hold_slots(h, 4)

    # when
    before_ms = int(time.time() * 1000)
    h.send(ids)

    # then: nothing left, the rows wait a little and no attempt was spent
    rows = h.rows(ids)
    assert {r.state for r in rows} == {State.RETRY_WAIT.value}
    assert all(r.attempts == 0 and r.possible_duplicate is False for r in rows)
    assert all(r.next_attempt_ms >= before_ms + 250 for r in rows)
    assert h.outbox_ids() == [] and all(h.attempts(i) == [] for i in ids)


def test_sender_fails_a_requeued_row_past_its_maximum_age(make_harness: Any, redis_url: str) -> None:
    h = make_harness(redis_url, max_age_s=60.0)
    [nid] = h.enqueue(1)
    with h.runtime.engine.begin() as conn:  # given: a row an hour old, and no slot to be had
        conn.execute(update(_N).where(_N.c.id == nid).values(created_at=datetime.now(UTC) - timedelta(hours=1)))
    mailbox_key = h.runtime.resolver.resolve_many([TENANT])[TENANT].mailbox_key
    h.runtime.run(h.runtime.throttle.block(mailbox_key, 60_000))

    h.send([nid])

    [row] = h.rows([nid])
    [attempt] = h.attempts(nid)
    assert (row.state, row.last_error_code, row.attempts) == (State.FAILED.value, "MaxAgeExceeded", 1)
    assert (attempt.outcome, attempt.error_code) == ("failed", "MaxAgeExceeded")


def test_sender_counts_the_maximum_age_of_a_resent_row_from_its_resend(make_harness: Any, redis_url: str) -> None:
    h = make_harness(redis_url, max_age_s=60.0)
    [nid] = h.enqueue(1)
    with h.runtime.engine.begin() as conn:  # given: a row an hour old, failed, and no slot to be had
        conn.execute(update(_N).where(_N.c.id == nid).values(created_at=datetime.now(UTC) - timedelta(hours=1),
                                                               state=State.FAILED.value))
    resend(h.runtime.engine, TENANT, [nid], actor="test")
    mailbox_key = h.runtime.resolver.resolve_many([TENANT])[TENANT].mailbox_key
    h.runtime.run(h.runtime.throttle.block(mailbox_key, 60_000))

    h.send([nid])

    [row] = h.rows([nid])
    assert (row.state, row.attempts) == (State.RETRY_WAIT.value, 0)  # waits: its age counts from the resend


def test_sender_stops_a_lane_at_a_429_and_requeues_its_rest(make_harness: Any, redis_url: str) -> None:
    # given: one lane, and a mailbox the emulator lets take two requests before it throttles
    h = make_harness(redis_url, mailbox_concurrency=1)
    h.emulator.set_config(requests_per_10min=2)
    ids = h.enqueue(5)

    # when
    h.send(ids)

    # then: two sent, the third throttled with its Retry-After, the rest back in the queue untried
    rows = h.rows(ids)
    assert [r.state for r in rows[:2]] == [State.SENT.value] * 2
    assert (rows[2].state, rows[2].last_status, rows[2].attempts) == (State.RETRY_WAIT.value, 429, 1)
    assert [a.outcome for a in h.attempts(ids[2])] == ["throttled"]
    assert all(r.state == State.RETRY_WAIT.value and r.attempts == 0 for r in rows[3:])
    assert all(r.next_attempt_ms >= rows[2].next_attempt_ms - 50 for r in rows[3:])  # not before the block ends
    assert sorted(h.outbox_ids()) == sorted(ids[:2])


def test_sender_sends_nothing_inside_a_retry_after_that_came_while_it_waited_for_a_connection(
        make_harness: Any, redis_url: str) -> None:
    # given: four lanes and one connection, a slow Graph whose first answer is a 429 (Retry-After 30 s),
    # and an emulator that counts any request arriving after that 429 (no grace)
    h = make_harness(redis_url, max_connections=1)
    h.emulator.set_config(latency_ms=300, retry_after_grace_ms=0)
    h.emulator.add_fault(kind="429", route="sendMail", count=1, retry_after="30")
    ids = h.enqueue(4)

    # when: one lane sends; the three others, admitted by the throttle, wait for its connection
    h.send(ids)

    # then: only the first request reached Graph; the others went back to the queue untried, throttled
    counters = h.emulator.counters()
    assert counters["requests_inside_retry_after"] == 0
    assert (counters["send_requests"], counters["throttled_429"]) == (1, 1)
    rows = h.rows(ids)
    assert sorted(r.attempts for r in rows) == [0, 0, 0, 1]
    assert {(r.state, r.wait_reason) for r in rows} == {(State.RETRY_WAIT.value, "throttled")}
    assert min(r.next_attempt_ms for r in rows) >= int(time.time() * 1000) + 20_000


def test_sender_records_when_each_request_left_not_when_it_began_to_wait_for_a_connection(
        make_harness: Any, redis_url: str) -> None:
    # given: one connection and a Graph that answers in 200 ms, so four sends of one mailbox go one at a time
    h = make_harness(redis_url, max_connections=1)
    h.emulator.set_config(latency_ms=200)
    ids = h.enqueue(4)

    # when
    h.send(ids)

    # then: each attempt left once the one before it had its answer (its started_at is when its gate let it go),
    # and its latency runs from then
    attempts = sorted((a for nid in ids for a in h.attempts(nid)), key=lambda a: a.started_at)
    assert [a.outcome for a in attempts] == ["sent"] * 4
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after.started_at >= before.started_at + timedelta(milliseconds=before.latency_ms), (before, after)
    assert all(a.latency_ms >= 200 for a in attempts)


def test_sender_withholds_a_request_whose_mailbox_another_worker_blocked_while_it_waited(
        make_harness: Any, redis_url: str) -> None:
    # given: four lanes and one connection; Graph holds the first request, so three lanes admitted by the
    # throttle (their send marks set) wait for the connection. The gate asks Redis whatever the wait: with the
    # default 20 ms, a lane whose loop was starved until after the block below could read its admission
    # time after the block and skip the re-check (the window the setting accepts; not what this test is about)
    h = make_harness(redis_url, max_connections=1, slot_wait_max_ms=30_000, mailbox_block_recheck_ms=0)
    h.emulator.add_fault(kind="hold", route="sendMail", count=1)
    ids = h.enqueue(4)
    result: dict[str, Any] = {}
    batch = threading.Thread(target=lambda: result.update(outcomes=h.send(ids)))
    batch.start()
    wait_until(lambda: _held(h.emulator) == 1 and h.runtime.redis_sync.exists(*map(mark_key, ids)) == 4,
               timeout_s=30, what="one request held by Graph, four sends admitted")

    # when: another worker gets a 429 for the mailbox (its block is in Redis only), then Graph answers
    mailbox_key = h.runtime.resolver.resolve_many([TENANT])[TENANT].mailbox_key
    other = MailboxThrottle(h.runtime.redis, limit=4, lease_ms=60_000)
    h.runtime.run(other.block(mailbox_key, 30_000))
    h.emulator.release_held()
    batch.join(timeout=60)

    # then: the held request was sent; none of the waiting ones left, and they wait for the block
    assert not batch.is_alive() and "outcomes" in result
    assert h.emulator.counters()["send_requests"] == 1
    rows = h.rows(ids)
    assert sorted(r.state for r in rows) == [State.RETRY_WAIT.value] * 3 + [State.SENT.value]
    assert all(r.attempts == 0 and r.wait_reason == "throttled" for r in rows if r.state != State.SENT.value)


def test_sender_resends_once_after_a_401_with_a_new_token(make_harness: Any, redis_url: str) -> None:
    h = make_harness(redis_url)
    [nid] = h.enqueue(1)
    h.emulator.add_fault(kind="status", route="sendMail", status=401, code="InvalidAuthenticationToken",
                         message="Access token has expired or is not yet valid.", count=1)

    h.send([nid])

    [row] = h.rows([nid])
    assert (row.state, row.attempts, row.possible_duplicate) == (State.SENT.value, 2, False)
    assert [(a.outcome, a.http_status) for a in h.attempts(nid)] == [("retry", 401), ("sent", 202)]
    assert h.outbox_ids() == [nid]
    assert int(h.emulator.counters()["token_requests"].get(DEMO_TENANT_ID, 0)) == 2


def test_batch_with_redis_stopped_mid_send_writes_known_outcomes_and_requeues_the_rest(
        make_harness: Any, tmp_path: Path) -> None:
    # given: a private Redis; another process holds two of the mailbox's four slots, so two lanes
    # send (Graph holds their requests in flight) and two wait for a slot
    url, proc = start_redis(tmp_path / "redis")
    try:
        h = make_harness(url, slot_wait_max_ms=30_000)
        ids = h.enqueue(10)
        _hold_slots(h, 2)
        h.emulator.add_fault(kind="hold", route="sendMail", count=2)
        result: dict[str, Any] = {}
        batch = threading.Thread(target=lambda: result.update(counts=_run_batch(h, ids, result)))
        batch.start()
        wait_until(lambda: _held(h.emulator) == 2, timeout_s=30, what="two sends held by Graph")

        # when: Redis goes away while they are in flight, then Graph answers them
        proc.terminate()
        proc.wait(timeout=10)
        h.emulator.release_held()
        batch.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    # then: the batch ended normally; the two sends Graph accepted are sent, the others wait
    # without a spent attempt or a duplicate flag; none lost, none failed
    assert not batch.is_alive() and "error" not in result, result.get("error")
    rows = {r.id: r for r in h.rows(ids)}
    sent = sorted(h.outbox_ids())
    assert len(sent) == 2 and {rows[i].state for i in sent} == {State.SENT.value}
    rest = [rows[i] for i in ids if i not in sent]
    assert {r.state for r in rest} <= {State.RETRY_WAIT.value, State.QUEUED.value}
    assert all(r.attempts == 0 and r.possible_duplicate is False and r.claimed_by is None for r in rest)
    assert result["counts"] == {"sent": 2, "retry_wait": 8}


def _hold_slots(h: Harness, n: int) -> None:
    """Take `n` of the mailbox's slots as another process would (for a minute)."""
    other = MailboxThrottle(h.runtime.redis, limit=4, lease_ms=60_000)
    mailbox_key = h.runtime.resolver.resolve_many([TENANT])[TENANT].mailbox_key
    for lane in range(n):
        assert h.runtime.run(other.try_acquire(mailbox_key, f"other-{lane}")).granted


def _run_batch(h: Harness, ids: list[str], result: dict[str, Any]) -> dict[str, int] | None:
    try:
        return deliver_batch(h.runtime, ids)
    except Exception as exc:  # reported to the test thread
        result["error"] = repr(exc)
        return None


def _held(emulator: Any) -> int:
    return sum(int(f["hits"]) for f in emulator.faults() if f["kind"] == "hold")

