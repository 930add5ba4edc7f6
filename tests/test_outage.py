"""A Microsoft outage longer than the old attempt budget: real workers, the emulator answering 503."""

from __future__ import annotations

from typing import Any

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from tests.stack import Stack, wait_until

NOTIFICATIONS = 6
OUTAGE_ATTEMPTS = 20  # each row sees this many 503s: far beyond the old budget of 8 attempts


def _configure(stack: Stack) -> None:
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, sender_name="Governance",
                        reply_to=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                        client_secret=DEMO_CLIENT_SECRET)


def _unavailable_attempts(stack: Stack, ids: list[str]) -> dict[str, int]:
    return {nid: sum(a["http_status"] == 503 for a in stack.attempts(nid)) for nid in ids}


def test_graph_503_outage_past_the_old_attempt_budget_ends_with_every_notification_sent(
        make_stack: Any, emulator: Any) -> None:
    # given: Graph answers 503 to every sendMail (test-speed backoff: 50 ms doubling to a 400 ms cap); the
    # circuit breakers are off, so every row keeps retrying (tests/test_breakers.py covers them on)
    stack = make_stack(TENANTMAIL_MAX_ATTEMPTS="8", TENANTMAIL_BREAKER_ENABLED="false")
    _configure(stack)
    emulator.add_fault(route="sendMail", kind="503")
    ids = [stack.producer.enqueue("acme", {"to": [f"user{i}@example.org"], "subject": f"Review {i}",
                                           "body": "Please review."}) for i in range(NOTIFICATIONS)]
    stack.start_workers(1, concurrency=4)

    # when: every notification has met the outage OUTAGE_ATTEMPTS times, Graph recovers
    wait_until(lambda: min(_unavailable_attempts(stack, ids).values()) >= OUTAGE_ATTEMPTS, timeout_s=120,
               what=f"{OUTAGE_ATTEMPTS} 503s for every notification")
    during = stack.states(ids)
    injected = emulator.counters()["faults_injected"]
    emulator.clear_faults()

    # then: nothing failed during the outage, and every notification is sent once
    assert "failed" not in during.values()
    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    assert injected >= NOTIFICATIONS * OUTAGE_ATTEMPTS
    outbox = [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]
    assert sorted(outbox) == sorted(ids)
    for nid in ids:
        attempts = stack.attempts(nid)
        assert [a["outcome"] for a in attempts[:-1]] == ["retry"] * (len(attempts) - 1)
        assert attempts[-1]["outcome"] == "sent" and len(attempts) > 8
    print(f"outage: {NOTIFICATIONS} notifications, {injected} 503s injected, "
          f"{sum(len(stack.attempts(n)) for n in ids)} attempts, states {sorted(set(stack.states(ids).values()))}")
