"""End to end: producer -> database -> dispatcher -> Celery workers -> emulator -> activity table."""

from __future__ import annotations

import time
from typing import Any

import redis

from emulator.demo import (
    DEMO_CEO,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    DEMO_UNLICENSED,
)
from shared.providers import save_graph_provider
from tests.stack import Stack, wait_until


def _configure(stack: Stack, tenant: str = "acme", sender: str = DEMO_SENDER, secret: str = DEMO_CLIENT_SECRET) -> int:
    return save_graph_provider(stack.engine, stack.box, tenant, sender_address=sender, sender_name="Governance",
                               reply_to=sender, azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                               client_secret=secret)


def _msg(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Access review {i}", "body": "Please review.", **extra}


def _outbox_ids(emulator: Any) -> list[str]:
    return [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]


def test_send_lands_once_in_outbox_with_headers_and_sender(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    ids = [stack.producer.enqueue("acme", _msg(i, headers={"X-Campaign": "q4"})) for i in range(20)]
    stack.start_workers(1)

    states = stack.wait_terminal(ids)

    assert set(states.values()) == {"sent"}
    outbox = emulator.outbox()
    assert sorted(_outbox_ids(emulator)) == sorted(ids)
    first = outbox[0]
    assert first["save_to_sent_items"] is False
    assert first["x_headers"]["X-Campaign"] == "q4"
    assert first["message"]["from"]["emailAddress"] == {"address": DEMO_SENDER, "name": "Governance"}
    attempt = stack.attempts(ids[0])[0]
    assert attempt["http_status"] == 202 and attempt["request_id"] and attempt["client_request_id"]
    row = stack.notification(ids[0])
    assert row["graph_request_id"] == attempt["request_id"]


def _wait_held(stack: Stack, ids: list[str]) -> None:
    wait_until(lambda: set(stack.states(ids).values()) == {"held"}, what=f"{len(ids)} notifications held")


def test_access_denied_is_recorded_with_code_held_and_not_retried(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack, "blocked", sender=DEMO_CEO)  # outside the app's Application Access Policy
    nid = stack.producer.enqueue("blocked", _msg())
    stack.start_workers(1)

    _wait_held(stack, [nid])

    attempts = stack.attempts(nid)
    assert len(attempts) == 1
    assert attempts[0]["http_status"] == 403
    assert attempts[0]["error_code"] == "AccessPolicyDenied"  # Graph's ErrorAccessDenied, told apart by [RAOP]
    assert "[RAOP]" in attempts[0]["error_message"]
    assert attempts[0]["request_id"]
    assert emulator.outbox() == []
    sends = [r for r in emulator.requests_log() if r.get("route") == "sendMail"]
    assert len(sends) == 1


def test_unlicensed_mailbox_and_wrong_secret_are_held_with_their_codes(make_stack: Any, emulator: Any) -> None:
    directory = emulator.get_directory()
    contoso = next(t for t in directory["tenants"] if t["id"] == DEMO_TENANT_ID)
    contoso["groups"][0]["members"].append(DEMO_UNLICENSED)  # inside the policy, so the licence check speaks
    emulator.set_directory(directory)
    stack = make_stack()
    _configure(stack, "unlicensed", sender=DEMO_UNLICENSED)
    _configure(stack, "badsecret", secret="the-secret-id-not-its-value")
    a = stack.producer.enqueue("unlicensed", _msg())
    b = stack.producer.enqueue("badsecret", _msg())
    stack.start_workers(1)

    _wait_held(stack, [a, b])
    assert stack.notification(a)["last_error_code"] == "MailboxNotEnabledForRESTAPI"
    assert stack.notification(b)["last_error_code"] == "AADSTS7000215"


def test_429_retry_after_is_obeyed_by_every_worker(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    emulator.add_fault(route="sendMail", kind="429", count=1, retry_after="1.5")
    ids = [stack.producer.enqueue("acme", _msg(i)) for i in range(12)]
    stack.start_workers(2, concurrency=4)

    assert set(stack.wait_terminal(ids).values()) == {"sent"}

    counters = emulator.counters()
    assert counters["throttled_429"] >= 1
    assert counters["requests_inside_retry_after"] == 0
    assert sorted(_outbox_ids(emulator)) == sorted(ids)
    attempts = [a for nid in ids for a in stack.attempts(nid)]
    throttled = [a for a in attempts if a["http_status"] == 429]
    assert len(throttled) == 1 and throttled[0]["retry_after_s"] == 1.5
    assert requests_started_inside_retry_after(attempts) == []


PROPAGATION_S = 0.05  # how long another process may take to see a block (one Redis round trip, in practice)


def requests_started_inside_retry_after(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attempts started after a 429 reached a worker and before its Retry-After ran out: at once
    in the worker that got the 429, and after PROPAGATION_S in any other."""
    windows = []
    for a in attempts:
        if a["http_status"] == 429 and a["retry_after_s"]:
            received = a["started_at"].timestamp() + a["latency_ms"] / 1000
            windows.append((a["mailbox"], a["worker"], received, received + a["retry_after_s"]))
    return [a for a in attempts for mailbox, worker, start, end in windows
            if a["mailbox"] == mailbox
            and start + (0 if a["worker"] == worker else PROPAGATION_S) < a["started_at"].timestamp() < end]


def test_503_is_retried_to_success(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    emulator.add_fault(route="sendMail", kind="503", count=2, body="html")
    nid = stack.producer.enqueue("acme", _msg())
    stack.start_workers(1)

    assert stack.wait_terminal([nid])[nid] == "sent"
    statuses = [a["http_status"] for a in stack.attempts(nid)]
    assert statuses == [503, 503, 202]
    assert _outbox_ids(emulator) == [nid]


def test_expired_token_is_refreshed_and_the_send_repeated_once(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    first = stack.producer.enqueue("acme", _msg(1))
    stack.start_workers(1)
    stack.wait_terminal([first])
    emulator.advance_clock(4000)  # past the token's lifetime, as Graph sees it

    second = stack.producer.enqueue("acme", _msg(2))

    assert stack.wait_terminal([second])[second] == "sent"
    statuses = [a["http_status"] for a in stack.attempts(second)]
    assert statuses == [401, 202]
    assert emulator.counters()["token_requests"][DEMO_TENANT_ID] == 2
    assert sorted(_outbox_ids(emulator)) == sorted([first, second])


def test_idempotent_enqueue_sends_once(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    a = stack.producer.enqueue("acme", _msg(), idempotency_key="review-42")
    b = stack.producer.enqueue("acme", _msg(), idempotency_key="review-42")
    c = stack.producer.enqueue("other", _msg(), idempotency_key="review-42")  # keys are per tenant
    assert a == b and a != c
    stack.start_workers(1)

    stack.wait_terminal([a])

    assert _outbox_ids(emulator).count(a) == 1


def test_enqueue_survives_redis_down_and_flushall(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    ids = [stack.producer.enqueue("acme", _msg(i)) for i in range(30)]  # no worker, no Redis use yet
    stack.start_workers(1, concurrency=2)
    wait_until(lambda: len(emulator.outbox()) >= 5, what="first sends")

    redis.Redis.from_url(stack.settings.redis_url).flushall()
    ids += [stack.producer.enqueue("acme", _msg(100 + i)) for i in range(10)]

    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    assert sorted(_outbox_ids(emulator)) == sorted(ids)


def test_sigkilled_workers_batch_is_finished_by_another_without_duplicates(make_stack: Any, emulator: Any) -> None:
    # given: slow Graph, so the victim is killed with sends in flight
    emulator.set_config(latency_ms=300)
    stack = make_stack()
    _configure(stack)
    ids = [stack.producer.enqueue("acme", _msg(i)) for i in range(40)]
    victim, = stack.start_workers(1, concurrency=4)
    wait_until(lambda: any(s == "sending" for s in stack.states(ids).values()), what="a claimed batch")

    # when: it dies mid-batch and another worker takes over
    stack.kill(victim)
    stack.start_workers(1, concurrency=4)
    states = stack.wait_terminal(ids, timeout_s=90)

    # then: everything finished; nothing that had not been sent went out twice
    outbox = _outbox_ids(emulator)
    flagged = {nid for nid in ids if stack.notification(nid)["possible_duplicate"]}
    duplicates = {nid for nid in set(outbox) if outbox.count(nid) > 1}
    assert set(states.values()) <= {"sent", "ambiguous"}
    assert duplicates <= flagged
    assert set(outbox) >= {nid for nid, s in states.items() if s == "sent"}
    assert all(stack.notification(n)["claimed_by"] is None for n in ids)


def test_two_workers_200_tenants_one_token_each_and_at_most_4_per_mailbox(make_stack: Any, emulator: Any) -> None:
    # given: 200 tenants, each its own Entra tenant, app and mailbox
    from emulator.demo import client_id_for, make_tenant, tenant_id_for

    emulator.set_config(latency_ms=20)
    stack = make_stack()
    for i in range(200):
        spec = make_tenant(i)
        emulator.add_tenant(spec)
        save_graph_provider(stack.engine, stack.box, f"t{i}", sender_address=spec["mailboxes"][0]["address"],
                            azure_tenant=tenant_id_for(i), client_id=client_id_for(i),
                            client_secret=spec["apps"][0]["secrets"][0]["value"])
    ids = stack.producer.enqueue_many([(f"t{i % 200}", _msg(i)) for i in range(2000)])

    # when
    stack.start_workers(2, concurrency=8)
    states = stack.wait_terminal(ids, timeout_s=120)

    # then
    assert set(states.values()) == {"sent"}
    counters = emulator.counters()
    assert counters["token_requests"] == {tenant_id_for(i): 1 for i in range(200)}
    assert max(counters["max_concurrency"].values()) <= 4
    outbox = _outbox_ids(emulator)
    dups = [n for n in set(outbox) if outbox.count(n) > 1]
    assert not dups, [(a["outcome"], a["error_code"], a["error_message"]) for a in stack.attempts(dups[0])]
    assert sorted(outbox) == sorted(ids)


def test_new_provider_version_is_used_within_5_seconds(make_stack: Any, emulator: Any) -> None:
    from emulator.demo import PLATFORM_CLIENT_ID, PLATFORM_CLIENT_SECRET, PLATFORM_SENDER, PLATFORM_TENANT_ID

    stack = make_stack(TENANTMAIL_PROVIDER_CACHE_TTL_MS="2000")
    _configure(stack)
    first = stack.producer.enqueue("acme", _msg(1))
    stack.start_workers(1)
    stack.wait_terminal([first])

    save_graph_provider(stack.engine, stack.box, "acme", sender_address=PLATFORM_SENDER,
                        azure_tenant=PLATFORM_TENANT_ID, client_id=PLATFORM_CLIENT_ID,
                        client_secret=PLATFORM_CLIENT_SECRET)
    changed_at = time.monotonic()

    def sent_from_new_sender() -> bool:
        nid = stack.producer.enqueue("acme", _msg(2))
        stack.wait_terminal([nid])
        return stack.notification(nid)["sender"] == PLATFORM_SENDER

    wait_until(sent_from_new_sender, timeout_s=10, what="the new provider version")
    assert time.monotonic() - changed_at < 5.0


RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbit_available() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        return True
    except OSError:
        return False


def test_pipeline_runs_on_rabbitmq_quorum_queue(make_stack: Any, emulator: Any) -> None:
    import os

    import pytest
    from kombu import Connection

    if not _rabbit_available():
        if os.environ.get("CI") == "true":
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (CI must provide it)")
        pytest.skip("RabbitMQ not available")
    with Connection(RABBIT_URL) as conn:  # a queue left by an earlier run would only hold stale ids
        conn.default_channel.queue_purge("tenantmail") if _queue_exists(conn) else None
    stack = make_stack(BROKER_URL=RABBIT_URL)
    _configure(stack)
    ids = [stack.producer.enqueue("acme", _msg(i)) for i in range(20)]
    stack.start_workers(2, concurrency=4)

    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    assert sorted(_outbox_ids(emulator)) == sorted(ids)
    with Connection(RABBIT_URL) as conn:
        _, _, consumers = conn.default_channel.queue_declare("tenantmail", passive=True)
        assert consumers >= 1


def _queue_exists(conn: Any) -> bool:
    try:
        conn.default_channel.queue_declare("tenantmail", passive=True)
        return True
    except Exception:
        conn.close()
        return False
