"""Circuit breakers (worker.breakers): the dispatcher's side on a real database and Redis, and real
workers against the emulator answering 503 (Graph) or 503 (the token endpoint)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as redis_async
from sqlalchemy import Engine, select

from emulator.demo import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    client_id_for,
    make_tenant,
    tenant_id_for,
)
from shared.db import make_engine
from shared.models import Notification
from shared.producer import Producer
from shared.providers import save_graph_provider, set_platform_default
from shared.secretbox import SecretBox
from shared.settings import Settings
from tests.stack import Stack, new_encryption_key, wait_until
from worker.breakers import STATE_KEY, BreakerBoard, Breakers, probe_key
from worker.dispatcher import Dispatcher

_N = Notification.__table__  # type: ignore[attr-defined]
GRAPH_SCOPE = "graph:graph.microsoft.com"
MAILBOX_SCOPE = f"mailbox:{DEMO_CLIENT_ID}:{DEMO_SENDER.lower()}"
TENANTS = ("acme", "globex", "initech")


def _msg(i: int) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Review {i}", "body": "Please review."}


class Published(list[str]):
    def __call__(self, ids: list[str]) -> None:
        self.extend(ids)


@pytest.fixture
def board_env(database_url: str, redis_url: str) -> Iterator[tuple[Engine, redis.Redis, Producer, Settings]]:
    settings = Settings(database_url=database_url, encryption_keys=new_encryption_key(), batch_size=50,
                        tenant_window=50, tenant_affinity=False, breaker_ramp_start=2, breaker_ramp_step_ms=60_000,
                        breaker_probe_interval_ms=60_000)
    engine = make_engine(settings)
    box = SecretBox.from_settings(settings)
    for tenant in TENANTS:  # three tenants of one Graph host, app and mailbox
        save_graph_provider(engine, box, tenant, sender_address=DEMO_SENDER, sender_name="Governance",
                            azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    r = redis.Redis.from_url(redis_url)
    yield engine, r, Producer(engine, Settings(fair_spacing_ms=1)), settings
    r.close()
    engine.dispose()


def _enqueue(producer: Producer, n: int) -> list[str]:
    return [producer.enqueue(TENANTS[i % len(TENANTS)], _msg(i)) for i in range(n)]


def test_open_graph_breaker_publishes_one_probe_per_interval_and_marks_the_rest(board_env: Any) -> None:
    # given: 12 due rows of three tenants behind one Graph host whose breaker is open
    engine, r, producer, settings = board_env
    ids = _enqueue(producer, 12)
    r.hset(STATE_KEY, GRAPH_SCOPE, f"open:{int(time.time() * 1000)}")
    published = Published()
    dispatcher = Dispatcher(engine, r, published, settings)

    # when: the dispatcher ticks three times within one probe interval
    for _ in range(3):
        dispatcher.tick()
    dispatcher._mark_waiting(int(time.time() * 1000))

    # then: one row went out, named the probe of the scope; the others wait, shown as a Graph outage
    assert len(published) == 1 and published[0] in ids
    assert r.get(probe_key(GRAPH_SCOPE)) == published[0].encode()
    with engine.connect() as conn:
        rows = dict(conn.execute(select(_N.c.id, _N.c.wait_reason).where(_N.c.id.in_(ids))).all())
        states = set(conn.scalars(select(_N.c.state).where(_N.c.id.in_(ids), _N.c.id != published[0])))
    assert states == {"retry_wait"}
    assert {rows[i] for i in ids if i != published[0]} == {"graph_outage"}

    # when: the probe's interval has passed (its key expired) and the dispatcher ticks again
    r.delete(probe_key(GRAPH_SCOPE))
    dispatcher.tick()

    # then: one more probe, never the same row twice while the first one's dispatch lease runs
    assert len(published) == 2 and len(set(published)) == 2


def test_closed_breaker_ramps_up_in_a_growing_window(board_env: Any) -> None:
    # given: 30 due rows behind a Graph host whose breaker has just closed (ramp start 2)
    engine, r, producer, settings = board_env
    _enqueue(producer, 30)
    now_ms = int(time.time() * 1000)
    r.hset(STATE_KEY, GRAPH_SCOPE, f"ramp:{now_ms}")
    published = Published()
    dispatcher = Dispatcher(engine, r, published, settings)

    # when / then: the first ticks let only the window's rows be in flight
    dispatcher.tick()
    dispatcher.tick()
    assert len(published) == 2

    # when: two ramp steps have passed since it closed (the window is 2 * 2^2 = 8)
    r.hset(STATE_KEY, GRAPH_SCOPE, f"ramp:{now_ms - 2 * settings.breaker_ramp_step_ms}")
    dispatcher.tick()

    # then: up to 8 are in flight; the 2 already published count toward it
    assert len(published) == 8

    # when: the window has grown past breaker_ramp_max, the ramp ends and the rest go at once
    r.hset(STATE_KEY, GRAPH_SCOPE, f"ramp:{now_ms - 20 * settings.breaker_ramp_step_ms}")
    dispatcher.tick()
    assert len(published) == 30 and r.hget(STATE_KEY, GRAPH_SCOPE) is None


def test_take_probe_is_one_row_per_scope_fleet_wide(board_env: Any) -> None:
    _engine, r, _producer, settings = board_env
    first, second = BreakerBoard(r, settings), BreakerBoard(r, settings)
    assert first.take_probe([GRAPH_SCOPE, MAILBOX_SCOPE], "row-1")
    assert not second.take_probe([MAILBOX_SCOPE], "row-2")  # one scope of the first probe: not again
    assert not second.take_probe([GRAPH_SCOPE], "row-3")
    assert r.get(probe_key(MAILBOX_SCOPE)) == b"row-1"


def test_graph_probe_answered_closes_the_mailbox_scopes_that_opened_during_its_outage(redis_url: str) -> None:
    # given: the Graph host open since t; one mailbox opened after it, another long before it
    settings = Settings(breaker_run_window_s=60.0)
    t_ms = int(time.time() * 1000)
    old_mailbox = "mailbox:other-app:old@example.org"
    r = redis.Redis.from_url(redis_url)
    r.hset(STATE_KEY, mapping={GRAPH_SCOPE: f"open:{t_ms}", MAILBOX_SCOPE: f"open:{t_ms + 500}",
                               old_mailbox: f"open:{t_ms - 600_000}"})

    async def answered() -> None:
        client = redis_async.Redis.from_url(redis_url)
        breakers = Breakers(client, settings)
        assert await breakers.is_open(GRAPH_SCOPE)
        await breakers.observe([GRAPH_SCOPE], None)  # the probe got a 202
        await client.aclose()

    asyncio.run(answered())

    # then: the host and the mailbox that failed with it ramp up; the older mailbox outage stays open
    states = {k.decode(): v.decode() for k, v in r.hgetall(STATE_KEY).items()}
    assert states[GRAPH_SCOPE].startswith("ramp:") and states[MAILBOX_SCOPE].startswith("ramp:")
    assert states[old_mailbox].startswith("open:")
    r.close()


# --- real workers against the emulator -------------------------------------------------------------------

BREAKER_ENV = {"TENANTMAIL_BREAKER_FAILURE_THRESHOLD": "3", "TENANTMAIL_BREAKER_PROBE_INTERVAL_MS": "1000",
               "TENANTMAIL_BREAKER_REFRESH_MS": "100", "TENANTMAIL_BREAKER_RAMP_START": "2",
               "TENANTMAIL_BREAKER_RAMP_STEP_MS": "300"}


def _configure(stack: Stack, *tenants: str) -> None:
    for tenant in tenants:
        save_graph_provider(stack.engine, stack.box, tenant, sender_address=DEMO_SENDER, sender_name="Governance",
                            azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)


def _breakers(stack: Stack) -> dict[str, str]:
    r = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        return {k.decode(): v.decode() for k, v in r.hgetall(STATE_KEY).items()}
    finally:
        r.close()


def _reasons(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    with stack.engine.connect() as conn:
        return dict(conn.execute(select(_N.c.id, _N.c.wait_reason).where(_N.c.id.in_(ids))).all())


def _all_wait(stack: Stack, ids: list[str], reason: str) -> bool:
    """Every row retry_wait with `reason`, but for at most one being sent (a probe)."""
    with stack.engine.connect() as conn:
        rows = conn.execute(select(_N.c.state, _N.c.wait_reason).where(_N.c.id.in_(ids))).all()
    waiting = sum(state == "retry_wait" and why == reason for state, why in rows)
    return waiting >= len(ids) - 1 and all(state in ("retry_wait", "sending") for state, _ in rows)


def _graph_attempts(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    return sorted((a for nid in ids for a in stack.attempts(nid)), key=lambda a: a["started_at"])


def test_graph_outage_opens_the_breaker_probes_once_per_interval_and_sends_all_after(
        make_stack: Any, emulator: Any) -> None:
    # given: two worker processes and 24 notifications of three tenants; Graph answers 503 to everything
    stack = make_stack(**BREAKER_ENV)
    _configure(stack, *TENANTS)
    emulator.add_fault(route="sendMail", kind="503")
    ids = [stack.producer.enqueue(TENANTS[i % 3], _msg(i)) for i in range(24)]
    stack.start_workers(2, concurrency=4)

    # when: the outage goes on for four probe intervals after the breaker opened
    scope = f"graph:{urlsplit(emulator.graph_base_url).netloc}"
    wait_until(lambda: _breakers(stack).get(scope, "").startswith("open"), timeout_s=60,
               what="the Graph breaker open")
    opened_ms = int(_breakers(stack)[scope].split(":")[1])
    wait_until(lambda: _all_wait(stack, ids, "graph_outage"), timeout_s=30, what="every row waiting on the outage")
    settled = len(_graph_attempts(stack, ids))
    wait_until(lambda: len(_graph_attempts(stack, ids)) >= settled + 4, timeout_s=30, what="four probes")
    during = stack.states(ids)
    attempts = _graph_attempts(stack, ids)
    emulator.clear_faults()

    # then: nothing failed; the rows wait as retry_wait (one may be in flight as the probe)
    assert "failed" not in during.values()
    assert sum(s == "retry_wait" for s in during.values()) >= len(ids) - 1
    # far fewer attempts than rows x retries: a run per process to open it, then probes
    assert len(attempts) < 3 * len(ids)
    # at most one probe per interval (1 s), fleet-wide: the attempts a whole interval after the opening
    # (rows already past their gate when it opened are not probes) are spaced by the interval, less the
    # jitter between a probe's dispatch and its request
    probes = [a["started_at"].timestamp() for a in attempts if a["started_at"].timestamp() * 1000 > opened_ms + 1000]
    assert len(probes) >= 3
    assert min(b - a for a, b in zip(probes, probes[1:], strict=False)) >= 0.8, probes

    # when: Graph is back; then every notification is sent, once each, and the breaker closed
    assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
    outbox = [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]
    assert sorted(outbox) == sorted(ids)
    assert not any(v.startswith("open") for v in _breakers(stack).values())
    logs = stack.logs()
    assert "breaker.opened" in logs and "breaker.closed" in logs
    assert all(r is None for r in _reasons(stack, ids).values())


def test_token_endpoint_outage_opens_the_entra_breaker(make_stack: Any, emulator: Any) -> None:
    # given: the token endpoint answers 503; no token is cached yet
    stack = make_stack(**BREAKER_ENV)
    _configure(stack, "acme")
    emulator.add_fault(route="token", kind="503")
    ids = [stack.producer.enqueue("acme", _msg(i)) for i in range(8)]
    stack.start_workers(1, concurrency=4)

    # when: the breaker has opened
    wait_until(lambda: any(k.startswith("entra:") and v.startswith("open") for k, v in _breakers(stack).items()),
               timeout_s=60, what="the Entra ID breaker open")
    wait_until(lambda: _all_wait(stack, ids, "entra_outage"), timeout_s=30, what="every row waiting on Entra ID")

    # then: nothing failed; once Entra ID answers, all are sent once each
    assert "failed" not in stack.states(ids).values()
    emulator.clear_faults()
    assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
    assert len(emulator.outbox()) == len(ids)


def test_relay_outage_opens_the_relay_breaker(make_stack: Any, emulator: Any) -> None:
    # given: two tenants on the platform default; the relay answers 421 (closing) to every MAIL FROM
    stack = make_stack(**BREAKER_ENV)
    for tenant in ("acme", "globex"):
        set_platform_default(stack.engine, tenant)
    emulator.add_smtp_fault(stage="mail", reply="421 4.3.2 Service not available, closing channel")
    ids = [stack.producer.enqueue(("acme", "globex")[i % 2], _msg(i)) for i in range(10)]
    stack.start_workers(1, concurrency=4)

    # when: the relay breaker has opened
    wait_until(lambda: _breakers(stack).get("relay", "").startswith("open"), timeout_s=60,
               what="the relay breaker open")
    wait_until(lambda: _all_wait(stack, ids, "relay_outage"), timeout_s=30, what="every row waiting on the relay")

    # then: nothing failed; once the relay answers, each is sent once
    assert "failed" not in stack.states(ids).values()
    emulator.clear_smtp_faults()
    assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
    sent = [m for m in emulator.smtp_messages() if m["rcpt_tos"] and m["rcpt_tos"][0].startswith("user")]
    assert len(sent) == len(ids)


def test_breaker_state_lost_from_redis_during_an_outage_ramps_the_backlog_instead_of_releasing_it(
        make_stack: Any, emulator: Any) -> None:
    # given: one worker, and the backlog of 20 tenants waiting behind an open Graph breaker (Graph answers 503
    # to everything); ramp start 2, a ramp step longer than the test, a run of 3 failures opens a scope
    threshold, ramp_start = 3, 2
    stack = make_stack(**{**BREAKER_ENV, "TENANTMAIL_BREAKER_FAILURE_THRESHOLD": str(threshold),
                          "TENANTMAIL_BREAKER_RAMP_START": str(ramp_start),
                          "TENANTMAIL_BREAKER_RAMP_STEP_MS": "600000", "TENANTMAIL_BREAKER_PROBE_INTERVAL_MS": "3000"})
    tenants = [f"t{i:02d}" for i in range(20)]
    for i, tenant in enumerate(tenants):  # each its own app and mailbox: the mailbox slots limit nothing here
        emulator.add_tenant(make_tenant(i))
        save_graph_provider(stack.engine, stack.box, tenant, sender_address=f"sender0@tenant{i}.example",
                            azure_tenant=tenant_id_for(i), client_id=client_id_for(i), client_secret=f"secret-{i}")
    emulator.add_fault(route="sendMail", kind="503")
    ids = [stack.producer.enqueue(tenants[i % len(tenants)], _msg(i)) for i in range(80)]
    stack.start_workers(1, concurrency=4)
    scope = f"graph:{urlsplit(emulator.graph_base_url).netloc}"
    wait_until(lambda: _breakers(stack).get(scope, "").startswith("open"), timeout_s=60, what="the Graph breaker open")
    wait_until(lambda: _all_wait(stack, ids, "graph_outage"), timeout_s=30, what="every row waiting on the outage")
    before = len(emulator.requests_log(route="sendMail"))

    # when: Redis loses everything (FLUSHALL: the breaker hash, probes, the broker's queue)
    r = redis.Redis.from_url(stack.settings.redis_url or "")
    r.flushall()
    r.close()

    # then: the scope came back ramping, not closed, and opened again after one run of failures: Graph met
    # at most that run and the ramp's window (plus a probe or two), not the 80 rows of the backlog
    # (the dispatcher notices the loss on its next tick; a worker's failing send may reopen the scope sooner)
    wait_until(lambda: "breaker.reseeded" in stack.logs(), timeout_s=30, what="the dispatcher reseeding the hash")
    wait_until(lambda: _breakers(stack).get(scope, "").startswith("open"), timeout_s=60,
               what="the Graph breaker open again")
    wait_until(lambda: _all_wait(stack, ids, "graph_outage"), timeout_s=30, what="every row waiting again")
    burst = len(emulator.requests_log(route="sendMail")) - before
    assert burst <= threshold + ramp_start + 2, burst
    print(f"breaker state lost mid-outage: {burst} sendMail requests until the breaker was open again (80 waiting)")

    # when: Graph is back; then every notification is sent once
    emulator.clear_faults()
    assert set(stack.wait_terminal(ids, timeout_s=120).values()) == {"sent"}
    assert sorted(m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()) == sorted(ids)
