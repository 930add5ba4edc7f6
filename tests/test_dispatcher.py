"""worker.dispatcher.Dispatcher (and the worker.sweeper.Sweeper it runs) with a recording publish function,
a real database and a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as redis_async
from sqlalchemy import Engine, select, update

from shared.db import make_engine
from shared.models import DeliveryAttempt, Notification, State
from shared.producer import Producer
from shared.settings import Settings
from tests.stack import ROOT, wait_until
from worker.dispatcher import Dispatcher
from worker.sendmarks import ACCEPTED_MARK, EPOCH_KEY, SendMarks, mark_key
from worker.store import AttemptRecord, RowOutcome, claim, write_outcomes
from worker.throttle import MailboxThrottle, Slot

_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
EPOCH = "epoch-aaaa"


@dataclass
class Recorder:
    """A publish function that keeps the batches instead of sending them to Celery."""

    batches: list[list[str]] = field(default_factory=list)
    fail_on_call: int | None = None

    def __call__(self, ids: list[str]) -> None:
        if self.fail_on_call is not None and len(self.batches) + 1 >= self.fail_on_call:
            raise ConnectionError("broker down")
        self.batches.append(list(ids))

    @property
    def ids(self) -> list[str]:
        return [i for b in self.batches for i in b]


@dataclass
class Env:
    engine: Engine
    redis: redis.Redis
    producer: Producer
    make: Callable[..., tuple[Dispatcher, Recorder]]


@pytest.fixture
def env(database_url: str, redis_url: str) -> Iterator[Env]:
    engine = make_engine(Settings(database_url=database_url))
    r = redis.Redis.from_url(redis_url)

    def make(**overrides: Any) -> tuple[Dispatcher, Recorder]:
        values: dict[str, Any] = dict(batch_size=5, tenant_window=12, dispatch_lease_ms=30_000)
        values.update(overrides)
        recorder = Recorder()
        return Dispatcher(engine, r, recorder, Settings(**values)), recorder

    yield Env(engine, r, Producer(engine, Settings(fair_spacing_ms=1)), make)
    r.close()
    engine.dispose()


def _msg(i: int = 0) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Review {i}", "body": "Please review."}


def _enqueue(env: Env, tenant: str, n: int) -> list[str]:
    return env.producer.enqueue_many([(tenant, _msg(i)) for i in range(n)])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _row(env: Env, nid: str) -> Any:
    with env.engine.connect() as conn:
        return conn.execute(select(_N).where(_N.c.id == nid)).one()


def _attempts(env: Env, nid: str) -> list[Any]:
    with env.engine.connect() as conn:
        return list(conn.execute(select(_A).where(_A.c.notification_id == nid)).all())


def _claim_expired(env: Env, ids: list[str], epoch: str = EPOCH) -> int:
    """Claim `ids` as a worker in `epoch` whose 1 ms send lease has already run out; returns a sweep time."""
    now_ms = _now_ms()
    claimed = claim(env.engine, ids, f"host:123/{epoch}", 1, now_ms)
    assert [c.id for c in claimed] == ids
    return now_ms + 10


def test_dispatcher_tick_publishes_due_rows_in_batches(env: Env) -> None:
    ids = _enqueue(env, "acme", 12)
    dispatcher, published = env.make(batch_size=5)

    count = dispatcher.tick()

    assert count == 12
    assert [len(b) for b in published.batches] == [5, 5, 2]
    assert sorted(published.ids) == sorted(ids)
    assert published.ids == ids  # fair_rank order
    lease = _row(env, ids[0]).dispatch_lease_until_ms
    assert lease is not None and lease > _now_ms() + 20_000


def test_dispatcher_tick_limits_each_tenant_to_its_window(env: Env) -> None:
    # given a tenant with a backlog of 100 and another with 5, all due
    big = _enqueue(env, "big", 100)
    small = _enqueue(env, "small", 5)
    dispatcher, published = env.make(tenant_window=12, batch_size=5)

    # when one tick runs
    count = dispatcher.tick()

    # then the big tenant gets only its window and the small one is not starved behind it
    assert count == 17
    assert sum(1 for i in published.ids if i in set(big)) == 12
    assert set(small) <= set(published.ids)
    assert all(len(b) <= 5 for b in published.batches)


def test_dispatcher_tick_counts_in_flight_rows_against_window(env: Env) -> None:
    ids = _enqueue(env, "acme", 20)
    claim(env.engine, ids[:10], f"host:1/{EPOCH}", 60_000, _now_ms())  # 10 being sent right now
    dispatcher, published = env.make(tenant_window=12, tenant_affinity=False)

    dispatcher.tick()

    assert len(published.ids) == 2
    assert set(published.ids) <= set(ids[10:])


def test_dispatcher_with_affinity_waits_until_a_tenants_rows_are_done(env: Env) -> None:
    ids = _enqueue(env, "acme", 20)
    other = _enqueue(env, "other", 3)
    claim(env.engine, ids[:1], f"host:1/{EPOCH}", 60_000, _now_ms())  # one still being sent
    dispatcher, published = env.make(tenant_window=12, tenant_affinity=True)

    dispatcher.tick()

    assert sorted(published.ids) == sorted(other)


def test_dispatcher_keeps_each_tenants_rows_in_one_batch(env: Env) -> None:
    a = _enqueue(env, "a", 6)
    b = _enqueue(env, "b", 6)
    c = _enqueue(env, "c", 6)
    dispatcher, published = env.make(tenant_window=12, batch_size=10)

    dispatcher.tick()

    assert sorted(map(sorted, published.batches)) == sorted(map(sorted, [a, b, c]))


def test_dispatcher_holds_a_tenant_whose_mailbox_is_inside_a_recorded_retry_after(env: Env) -> None:
    # given: one of acme's rows got a 429 and waits out its Retry-After; Redis has lost the block
    throttled, *queued = _enqueue(env, "acme", 3)
    other = _enqueue(env, "other", 2)
    with env.engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == throttled).values(
            state=State.RETRY_WAIT.value, last_status=429, next_attempt_ms=_now_ms() + 60_000))
    env.redis.flushall()
    dispatcher, published = env.make(tenant_affinity=False)

    # when
    dispatcher.tick()

    # then: acme's queued rows wait for the window to pass; other tenants go
    assert sorted(published.ids) == sorted(other)
    with env.engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == throttled).values(next_attempt_ms=_now_ms() - 1))
    dispatcher.tick()
    assert set(queued) | {throttled} <= set(published.ids)


def test_dispatcher_tick_skips_rows_not_yet_due(env: Env) -> None:
    due, later = _enqueue(env, "acme", 2)
    with env.engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == later).values(state=State.RETRY_WAIT.value,
                                                                 next_attempt_ms=_now_ms() + 60_000))
    dispatcher, published = env.make()

    dispatcher.tick()

    assert published.ids == [due]


def test_dispatcher_tick_does_not_republish_leased_rows(env: Env) -> None:
    ids = _enqueue(env, "acme", 3)
    dispatcher, published = env.make(dispatch_lease_ms=60_000)
    assert dispatcher.tick() == 3

    again = dispatcher.tick()
    other_dispatcher, other_published = env.make(dispatch_lease_ms=60_000)
    other = other_dispatcher.tick()

    assert again == 0 and other == 0
    assert sorted(published.ids) == sorted(ids) and other_published.ids == []


def test_dispatcher_tick_republishes_after_lease_expires(env: Env) -> None:
    ids = _enqueue(env, "acme", 3)
    dispatcher, published = env.make(dispatch_lease_ms=50)
    assert dispatcher.tick() == 3

    wait_until(dispatcher.tick, timeout_s=10, what="the unclaimed rows to be published again")

    assert len(published.batches) == 2
    assert sorted(published.batches[1]) == sorted(ids)


def test_dispatcher_tick_unleases_rows_when_publish_fails(env: Env) -> None:
    ids = _enqueue(env, "acme", 12)
    dispatcher, published = env.make(batch_size=5, tenant_affinity=False)
    published.fail_on_call = 2  # the broker goes away after the first batch

    count = dispatcher.tick()

    assert count == 5
    assert all(_row(env, i).dispatch_lease_until_ms is not None for i in ids[:5])
    assert all(_row(env, i).dispatch_lease_until_ms is None for i in ids[5:])
    published.fail_on_call = None
    assert dispatcher.tick() == 7
    assert published.batches[1:] == [ids[5:10], ids[10:]]


def test_dispatcher_sweep_requeues_lost_row_never_sent(env: Env) -> None:
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])

    recovered = env.make()[0].sweeper.sweep(sweep_ms)

    row = _row(env, nid)
    assert recovered == 1
    assert (row.state, row.send_lease_until_ms, row.claimed_by) == (State.QUEUED.value, None, None)
    assert row.possible_duplicate is False and row.attempts == 0 and row.ambiguous_count == 0
    assert row.next_attempt_ms <= sweep_ms
    assert _attempts(env, nid) == []


def test_dispatcher_sweep_fences_a_requeued_row_off_from_the_slow_worker_that_still_holds_it(
        env: Env, redis_url: str) -> None:
    # given: a row claimed by a worker that is slow, not dead: its lease ran out before its send began
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    old_claim = f"host:123/{EPOCH}"

    # when: the sweeper puts it back in the queue, and another batch claims it
    env.make()[0].sweeper.sweep(sweep_ms)
    new_claim = f"host:456/{EPOCH}"
    # (the row is due at the sweep's time, 10 ms after the first claim: a fast machine gets here sooner)
    assert [c.id for c in claim(env.engine, [nid], new_claim, 60_000, max(_now_ms(), sweep_ms))] == [nid]

    # then: the slow worker can start it neither through Graph nor through the relay; the new claim can
    async def starts() -> tuple[Slot, bool, Slot, bool]:
        r = redis_async.Redis.from_url(redis_url)
        try:
            throttle, marks = MailboxThrottle(r, limit=4, lease_ms=10_000), SendMarks(r)
            lane = uuid.uuid4().hex
            assert (await throttle.try_acquire("app:mbx@contoso.example", lane)).granted
            old_graph = await throttle.begin_send("app:mbx@contoso.example", lane, nid, claim=old_claim)
            old_relay = await marks.mark_started(nid, claim=old_claim)
            new_graph = await throttle.begin_send("app:mbx@contoso.example", lane, nid, claim=new_claim)
            # the new claim's started mark does not lift the old claim's fence
            after = (await throttle.begin_send("app:mbx@contoso.example", lane, nid, claim=old_claim)).granted
            after = after or await marks.mark_started(nid, claim=old_claim)
            return old_graph, old_relay, new_graph, after
        finally:
            await r.aclose()
    old_graph, old_relay, new_graph, after = asyncio.run(starts())
    assert (old_graph.granted, old_graph.fenced, old_relay) == (False, True, False)
    assert (new_graph.granted, new_graph.fenced) == (True, False)
    assert after is False


def test_dispatcher_sweep_outcome_of_a_row_another_claim_holds_writes_no_attempt(env: Env) -> None:
    # given: a row the sweeper took from a slow worker and another batch claimed
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    env.make()[0].sweeper.sweep(sweep_ms)
    [row] = claim(env.engine, [nid], f"host:456/{EPOCH}", 60_000, max(_now_ms(), sweep_ms))  # due at the sweep

    # when: the slow worker writes an outcome for it after all
    record = AttemptRecord(started_at=datetime.now(UTC), outcome="sent", http_status=202)
    written = write_outcomes(env.engine, [RowOutcome(row, State.SENT, 0, (record,), False, 0)], f"host:123/{EPOCH}")

    # then: nothing of it lands: the row is the new claim's, with no attempt row
    assert written == 0
    assert (_row(env, nid).state, _row(env, nid).claimed_by) == (State.SENDING.value, f"host:456/{EPOCH}")
    assert _attempts(env, nid) == []


def test_dispatcher_sweep_flags_marked_row_for_one_retry(env: Env) -> None:
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    env.redis.set(mark_key(nid), "1")  # the worker got a slot: the send may have gone out

    env.make(ambiguous_policy="retry_once")[0].sweeper.sweep(sweep_ms)

    row = _row(env, nid)
    assert row.state == State.RETRY_WAIT.value
    assert row.possible_duplicate is True
    assert (row.ambiguous_count, row.attempts, row.last_error_code) == (1, 1, "WorkerLost")
    assert row.send_lease_until_ms is None and row.claimed_by is None
    [attempt] = _attempts(env, nid)
    assert (attempt.outcome, attempt.error_code, attempt.attempt_no, attempt.worker) == (
        "ambiguous", "WorkerLost", 1, f"host:123/{EPOCH}")


def test_dispatcher_sweep_records_as_sent_a_row_graph_accepted_before_its_worker_died(env: Env) -> None:
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    env.redis.set(mark_key(nid), ACCEPTED_MARK)  # 202 came back; the outcome was never written

    env.make()[0].sweeper.sweep(sweep_ms)

    row = _row(env, nid)
    assert (row.state, row.possible_duplicate, row.attempts, row.last_status) == ("sent", False, 1, 202)
    assert row.sent_at is not None and row.claimed_by is None and row.send_lease_until_ms is None
    [attempt] = _attempts(env, nid)
    assert (attempt.outcome, attempt.http_status, attempt.worker) == ("sent", 202, f"host:123/{EPOCH}")


def test_dispatcher_sweep_marks_ambiguous_under_give_up(env: Env) -> None:
    [nid] = _enqueue(env, "acme", 1)
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    env.redis.set(mark_key(nid), "1")

    env.make(ambiguous_policy="give_up")[0].sweeper.sweep(sweep_ms)

    row = _row(env, nid)
    assert (row.state, row.possible_duplicate, row.ambiguous_count) == (State.AMBIGUOUS.value, True, 1)


def test_dispatcher_sweep_second_ambiguity_is_final_under_retry_once(env: Env) -> None:
    [nid] = _enqueue(env, "acme", 1)
    with env.engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == nid).values(ambiguous_count=1, possible_duplicate=True))
    env.redis.set(EPOCH_KEY, EPOCH)
    sweep_ms = _claim_expired(env, [nid])
    env.redis.set(mark_key(nid), "1")

    env.make(ambiguous_policy="retry_once")[0].sweeper.sweep(sweep_ms)

    assert (_row(env, nid).state, _row(env, nid).ambiguous_count) == (State.AMBIGUOUS.value, 2)


@pytest.mark.parametrize("current_epoch", ["epoch-bbbb", None])
def test_dispatcher_sweep_treats_other_epoch_as_possibly_sent(env: Env, current_epoch: str | None) -> None:
    # given a row claimed under one Redis epoch, and Redis since restarted empty (new epoch or none yet)
    [nid] = _enqueue(env, "acme", 1)
    sweep_ms = _claim_expired(env, [nid], epoch=EPOCH)
    if current_epoch is not None:
        env.redis.set(EPOCH_KEY, current_epoch)

    # when the sweeper finds it, with no send mark (Redis lost the marks with its data)
    env.make(ambiguous_policy="retry_once")[0].sweeper.sweep(sweep_ms)

    # then it cannot know the send did not start: flagged, not silently requeued
    row = _row(env, nid)
    assert (row.state, row.possible_duplicate) == (State.RETRY_WAIT.value, True)


def test_dispatcher_sweep_leaves_live_and_other_rows_alone(env: Env) -> None:
    live, queued = _enqueue(env, "acme", 2)
    env.redis.set(EPOCH_KEY, EPOCH)
    claim(env.engine, [live], f"host:1/{EPOCH}", 60_000, _now_ms())

    recovered = env.make()[0].sweeper.sweep(_now_ms())

    assert recovered == 0
    assert _row(env, live).state == State.SENDING.value
    assert _row(env, queued).state == State.QUEUED.value


def test_dispatcher_tick_sweeps_and_republishes_lost_rows(env: Env) -> None:
    ids = _enqueue(env, "acme", 2)
    env.redis.set(EPOCH_KEY, EPOCH)
    _claim_expired(env, ids)
    dispatcher, published = env.make()

    wait_until(lambda: dispatcher.tick() or None, timeout_s=10, what="lost rows to be republished")

    assert sorted(published.ids) == sorted(ids)


def test_dispatcher_module_imports_without_warnings() -> None:
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", "import worker.dispatcher"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr[-2000:]
