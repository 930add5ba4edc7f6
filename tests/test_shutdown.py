"""Graceful shutdown: SIGTERM mid-batch leaves nothing claimed and sends nothing twice."""

from __future__ import annotations

import signal
from typing import Any

import redis

from emulator.demo import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    PLATFORM_CLIENT_ID,
    PLATFORM_CLIENT_SECRET,
    PLATFORM_NO_REPLY,
    PLATFORM_TENANT_ID,
)
from shared.models import State
from shared.providers import save_graph_provider
from tests.stack import wait_until
from worker.sendmarks import ACCEPTED_MARK, mark_key


def test_sigterm_mid_batch_finishes_in_flight_sends_and_leaves_nothing_claimed(make_stack: Any,
                                                                               emulator: Any) -> None:
    # given a worker busy with a batch against a slow Graph
    emulator.set_config(latency_ms=300)
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    ids = [stack.producer.enqueue("acme", {"to": [f"u{i}@example.org"], "subject": f"s{i}"}) for i in range(30)]
    worker, = stack.start_workers(1, concurrency=4)
    wait_until(lambda: any(s == "sending" for s in stack.states(ids).values()), what="a claimed batch")

    # when it is asked to stop
    stack.kill(worker, signal.SIGTERM)

    # then it exited cleanly, every row is terminal or back in the queue, and no row is held
    assert worker.returncode == 0, stack.logs()[-3000:]
    rows = [stack.notification(n) for n in ids]
    assert all(r["state"] != State.SENDING.value for r in rows)
    assert all(r["claimed_by"] is None for r in rows)
    sent_before_stop = {r["id"] for r in rows if r["state"] == State.SENT.value}
    assert sent_before_stop, "the in-flight sends should have been finished and recorded"

    # and a new worker sends the rest, each exactly once
    stack.start_workers(1, concurrency=4)
    stack.wait_terminal(ids, timeout_s=90)
    outbox = [m["x_headers"]["X-Tenantmail-Notification-Id"] for m in emulator.outbox()]
    assert sorted(outbox) == sorted(ids)


def test_worker_killed_after_graph_accepted_is_recorded_sent_and_never_resent(make_stack: Any, emulator: Any) -> None:
    # given one batch holding rows Graph accepts at once and a row whose request Graph holds open
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "quick", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    save_graph_provider(stack.engine, stack.box, "slow", sender_address=PLATFORM_NO_REPLY,
                        azure_tenant=PLATFORM_TENANT_ID, client_id=PLATFORM_CLIENT_ID,
                        client_secret=PLATFORM_CLIENT_SECRET)
    emulator.add_fault(kind="hold", route="sendMail", mailbox=PLATFORM_NO_REPLY)
    quick = stack.producer.enqueue_many([("quick", {"to": [f"q{i}@example.org"], "subject": "q"}) for i in range(5)])
    stack.producer.enqueue("slow", {"to": ["s@example.org"], "subject": "held"})
    worker, = stack.start_workers(1, concurrency=2)
    r = redis.Redis.from_url(stack.env["REDIS_URL"])
    wait_until(lambda: all(r.get(mark_key(n)) == ACCEPTED_MARK.encode() for n in quick),
               what="Graph's 202s to be marked while the batch is still open")
    assert all(s == State.SENDING.value for s in stack.states(quick).values())

    # when the worker dies before writing the batch's outcomes, and another takes over
    stack.kill(worker)
    emulator.release_held()
    emulator.clear_faults()
    stack.start_workers(1, concurrency=2)

    # then the accepted rows are recorded sent, unflagged, each in the outbox exactly once
    assert set(stack.wait_terminal(quick).values()) == {State.SENT.value}
    assert not any(stack.notification(n)["possible_duplicate"] for n in quick)
    outbox = [m["x_headers"]["X-Tenantmail-Notification-Id"] for m in emulator.outbox()]
    assert sorted(n for n in outbox if n in quick) == sorted(quick)
    assert "recorded by the sweeper" in (stack.attempts(quick[0])[-1]["error_message"] or "")
