"""Exchange's sending limits kept before Microsoft refuses: the Redis counters alone, then real workers
against the emulator enforcing the same limits the way Exchange does (202, then an NDR)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests
from sqlalchemy import text

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from shared.senders import SenderIdentity
from tenantmail.embedded import free_port
from tests.stack import Stack, wait_until
from tests.test_api_provider import form
from tests.test_senders import SECURITY, _with_mailboxes
from transport.quota_windows import QuotaWindows, Window

# --- the counters, on a real Redis -----------------------------------------------------------------


def _windows(redis_url: str) -> tuple[QuotaWindows, redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    return QuotaWindows(client), client


def test_admit_takes_the_prefix_that_fits_and_says_when_the_next_will(redis_url: str) -> None:
    quotas, _ = _windows(redis_url)
    window = Window("tm:quota:rcpt:t", window_ms=1_440_000, limit=10)  # 1 s buckets
    assert quotas.seed(window, {}) is True
    first = quotas.admit([window], [[4], [4]], now_ms=1_000_000)
    assert first.admitted == 2
    later = quotas.admit([window], [[1], [1], [3], [1]], now_ms=1_500_000)
    assert later.flags == (1, 1, 0, 0)  # 8 + 1 + 1 = 10; the 3 does not fit, and nothing overtakes it
    # Taken in buckets 1000 (8) and 1500 (2); room for 3 needs the oldest bucket released:
    assert later.next_free_ms == (1000 + 1) * 1000 + window.hold_ms
    after = quotas.admit([window], [[3]], now_ms=later.next_free_ms)
    assert after.admitted == 1


def test_admit_checks_every_counter_and_never_fits_an_item_over_the_limit(redis_url: str) -> None:
    quotas, _ = _windows(redis_url)
    recipients, requests = Window("a", 1_440_000, 100), Window("b", 1_440_000, 2)
    for w in (recipients, requests):
        quotas.seed(w, {})
    assert quotas.admit([recipients, requests], [[1, 1], [1, 1], [1, 1]], now_ms=10_000).flags == (1, 1, 0)
    alone = quotas.admit([recipients], [[101], [1]], now_ms=10_000)
    assert alone.flags == (2, 1)  # over the limit on its own: it never fits, and holds nothing back


def test_an_item_needing_none_of_a_spent_counter_still_goes(redis_url: str) -> None:
    quotas, _ = _windows(redis_url)
    mailbox, external = Window("m", 1_440_000, 100), Window("x", 1_440_000, 1)
    for w in (mailbox, external):
        quotas.seed(w, {})
    assert quotas.admit([mailbox, external], [[1, 1], [1, 1], [1, 0]], now_ms=10_000).flags == (1, 0, 1)


def test_a_lost_counter_takes_nothing_until_seeded_and_seeding_is_once(redis_url: str) -> None:
    quotas, client = _windows(redis_url)
    window = Window("tm:quota:rcpt:lost", 1_440_000, 10)
    assert quotas.admit([window], [[1]], now_ms=5_000).unseeded == window
    assert quotas.seed(window, {window.bucket_of(4_000): 9}) is True
    assert quotas.seed(window, {}) is False  # a second rebuild does not overwrite the first
    assert quotas.admit([window], [[2]], now_ms=5_000).admitted == 0
    assert quotas.admit([window], [[1]], now_ms=5_000).admitted == 1
    client.flushall()
    assert quotas.admit([window], [[1]], now_ms=5_000).unseeded == window


def test_give_back_returns_what_a_send_that_never_left_took(redis_url: str) -> None:
    quotas, _ = _windows(redis_url)
    window = Window("tm:quota:rcpt:g", 1_440_000, 5)
    quotas.seed(window, {})
    taken = quotas.admit([window], [[5]], now_ms=1_000)
    assert quotas.admit([window], [[1]], now_ms=1_000).admitted == 0
    quotas.give_back(window, taken.buckets[0], 5)
    assert quotas.admit([window], [[5]], now_ms=1_000).admitted == 1


# --- end to end ------------------------------------------------------------------------------------


def _configure(stack: Stack, *, limit: int, external: int | None = None) -> None:
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET,
                        senders=[SenderIdentity("security", SECURITY, daily_recipient_limit=limit)],
                        daily_external_recipient_limit=external)


def _msg(i: int, **extra: Any) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Alert {i}", "body": "Hello.", **extra}


def _waiting_for_quota(stack: Stack) -> list[dict[str, Any]]:
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, next_attempt_ms, attempts FROM notification "
                                 "WHERE state = 'retry_wait' AND wait_reason = 'quota'")).mappings().all()
    return [dict(r) for r in rows]


def test_a_spent_sender_waits_for_its_window_and_never_triggers_an_ndr(make_stack: Any, emulator: Any) -> None:
    window_s = 30
    _with_mailboxes(emulator, SECURITY)
    emulator.set_config(recipients_per_day=5, recipient_window_s=window_s)  # Exchange's limit, as ours
    stack = make_stack(TENANTMAIL_RECIPIENT_WINDOW_S=str(window_s))
    _configure(stack, limit=5)
    # 8 recipients queued for security (one named twice: counted once), 2 for the default sender.
    security = [stack.producer.enqueue("acme", _msg(i, sender="security")) for i in range(6)]
    security.append(stack.producer.enqueue("acme", _msg(6, sender="security", cc=["USER6@example.org"],
                                                      bcc=["user7@example.org"])))
    others = [stack.producer.enqueue("acme", _msg(i)) for i in (10, 11)]
    stack.start_workers(1)

    # Given the budget of 5: five go, the rest wait for the window with reason quota, no attempt spent.
    wait_until(lambda: len(_waiting_for_quota(stack)) == 2, what="two notifications waiting for quota")
    assert set(stack.wait_terminal(others).values()) == {"sent"}  # another mailbox is not held back
    waiting = _waiting_for_quota(stack)
    assert all(w["attempts"] == 0 and w["next_attempt_ms"] > time.time() * 1000 for w in waiting)
    assert sorted(stack.states(security).values()).count("sent") == 5

    # When the window frees, the rest go; none failed, and Exchange (the emulator) never bounced one.
    assert set(stack.wait_terminal(security, timeout_s=window_s * 4).values()) == {"sent"}
    assert emulator.counters()["would_bounce"] == 0
    assert not [m for m in emulator.outbox() if m["ndr"]]
    assert emulator.counters()["throttled_429"] == 0


def test_after_redis_loses_the_counters_they_are_rebuilt_from_the_database(make_stack: Any, emulator: Any,
                                                                          redis_url: str) -> None:
    _with_mailboxes(emulator, SECURITY)
    emulator.set_config(recipients_per_day=4)
    stack = make_stack()
    _configure(stack, limit=4)
    first = [stack.producer.enqueue("acme", _msg(i, sender="security")) for i in range(3)]
    stack.start_workers(1)
    assert set(stack.wait_terminal(first).values()) == {"sent"}

    redis.Redis.from_url(redis_url).flushall()  # counters, throttle state, broker: all gone
    more = [stack.producer.enqueue("acme", _msg(i, sender="security")) for i in range(3, 6)]

    wait_until(lambda: len(_waiting_for_quota(stack)) == 2, what="the rebuilt budget to hold two back")
    assert sorted(stack.states(more).values()) == ["retry_wait", "retry_wait", "sent"]
    assert emulator.counters()["would_bounce"] == 0


def test_the_tenant_external_budget_holds_external_mail_only(make_stack: Any, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    emulator.set_config(external_recipients_per_day=2)
    stack = make_stack()
    _configure(stack, limit=1000, external=2)
    external = [stack.producer.enqueue("acme", _msg(i)) for i in range(3)]
    internal = [stack.producer.enqueue("acme", {"to": [f"colleague{i}@contoso.example"], "subject": "s",
                                                "body": "b"}) for i in range(2)]
    stack.start_workers(1)

    wait_until(lambda: len(_waiting_for_quota(stack)) == 1, what="one external notification held")
    assert set(stack.wait_terminal(internal).values()) == {"sent"}
    assert sorted(stack.states(external).values()) == ["retry_wait", "sent", "sent"]
    assert emulator.counters()["would_bounce"] == 0


def test_requests_are_paced_under_the_per_10_minute_limit(make_stack: Any, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    emulator.set_config(requests_per_10min=3)
    stack = make_stack(TENANTMAIL_MAILBOX_REQUESTS_PER_WINDOW="3")
    _configure(stack, limit=1000)
    ids = [stack.producer.enqueue("acme", _msg(i, sender="security")) for i in range(5)]
    stack.start_workers(1)

    wait_until(lambda: len(_waiting_for_quota(stack)) == 2, what="two requests held back")
    assert sorted(stack.states(ids).values()).count("sent") == 3
    assert emulator.counters()["throttled_429"] == 0  # Graph never had to refuse one


def test_usage_per_sender_on_the_api_and_page_from_redis_or_after_a_loss_the_database(
        api: Any, make_stack: Any, emulator: Any, redis_url: str) -> None:
    _with_mailboxes(emulator, SECURITY)
    admin = api.client("acme")
    saved = admin.put("/v1/email-provider", json=form(
        senders={"security": {"address": SECURITY, "daily_recipient_limit": 3}}, daily_external_recipient_limit=50))
    assert saved.status_code == 200 and saved.json()["daily_external_recipient_limit"] == 50, saved.text
    ids = [admin.post("/v1/notifications", json=_msg(i, sender="security")).json()["id"] for i in range(4)]
    stack = make_stack(TENANTMAIL_ENCRYPTION_KEYS=str(api.settings.encryption_keys))
    stack.start_workers(1)
    [waiting] = wait_until(lambda: _waiting_for_quota(stack), what="the fourth notification waiting")

    usage = admin.get("/v1/email-provider/usage").json()
    security = usage["senders"]["security"]
    assert (security["recipients"], security["limit"], security["remaining"], security["source"]) == (3, 3, 0, "redis")
    next_free = datetime.fromisoformat(security["next_free_at"])
    assert next_free > datetime.now(UTC) + timedelta(hours=23)
    assert abs(next_free.timestamp() * 1000 - waiting["next_attempt_ms"]) < 1000  # the row waits exactly that long
    detail = admin.get(f"/v1/notifications/{waiting['id']}").json()
    assert (detail["state"], detail["wait_reason"], detail["named_sender"]) == ("retry_wait", "quota", "security")
    assert abs(datetime.fromisoformat(detail["next_attempt_at"]).timestamp() * 1000 - waiting["next_attempt_ms"]) < 1
    assert security["requests"]["used"] == 3
    default = usage["senders"]["default"]
    assert (default["recipients"], default["remaining"], default["limit"]) == (0, 10_000, 10_000)
    assert (usage["external"]["recipients"], usage["external"]["remaining"]) == (3, 47)

    redis.Redis.from_url(redis_url).flushall()
    lost = admin.get("/v1/email-provider/usage").json()["senders"]["security"]
    assert (lost["recipients"], lost["remaining"], lost["source"]) == (3, 0, "database")
    assert sorted(stack.states(ids).values()) == ["retry_wait", "sent", "sent", "sent"]

    page = requests.Session()
    page.trust_env = False
    page.post(api.base_url + "/ui/login", data={"key": api.key("acme", "viewer")}, timeout=30)
    html = page.get(api.base_url + "/ui/email-provider", timeout=30).text
    assert re.search(r"<tr id='sender-security'>.*<td class='used'>3 of 3</td><td class='remaining'>0</td>", html)
    assert "id='external-usage'" in html


def test_worker_metrics_show_each_senders_recipients_used_and_remaining(make_stack: Any, emulator: Any) -> None:
    # given a sender allowed 3 recipients a day and 4 notifications for it, sent by a worker with a metrics port
    _with_mailboxes(emulator, SECURITY)
    stack = make_stack()
    _configure(stack, limit=3)
    for i in range(4):
        stack.producer.enqueue("acme", _msg(i, sender="security"))
    port = free_port()
    stack.start_workers(1, metrics_port=port)
    wait_until(lambda: _waiting_for_quota(stack), what="the fourth notification waiting")

    # when its /metrics is scraped, then each named sender has its figures, labelled by tenant and sender name
    scraped = wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, what="/metrics")
    assert 'tenantmail_sender_recipients_used{sender="security",tenant="acme"} 3.0' in scraped
    assert 'tenantmail_sender_recipients_remaining{sender="security",tenant="acme"} 0.0' in scraped
    assert SECURITY not in scraped  # names, never addresses
