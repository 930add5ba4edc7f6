"""A broken configuration holds a tenant's queue, or one sender's when only its mailbox is refused; a provider
save releases it. Real workers, the emulator."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_GROUP, DEMO_SENDER, DEMO_TENANT_ID, demo_directory
from shared.events import recent_events
from shared.holds import HELD_EVENT, RELEASED_EVENT, SENDER_HOLD_CODES, HoldScope, hold_scope
from shared.models import Notification, WebhookEndpoint, WebhookEvent
from shared.providers import save_graph_provider
from shared.senders import SenderIdentity
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import Stack, wait_until
from worker.retry_policy import HOLD_CODES

ADMIN = "it-admin@example.org"
NOTIFICATIONS = 8
SECURITY = "security@contoso.example"


def _configure(stack: Stack, secret: str, *senders: SenderIdentity) -> int:
    return save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, sender_name="Governance",
                               azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID, client_secret=secret,
                               admin_contact_email=ADMIN, senders=senders)


def _held(stack: Stack, ids: list[str]) -> bool:
    return set(stack.states(ids).values()) == {"held"}


def test_wrong_secret_holds_the_queue_and_a_provider_save_sends_each_once(make_stack: Any, emulator: Any) -> None:
    # given: a tenant whose saved secret is the secret's ID, not its Value
    stack = make_stack()
    _configure(stack, "the-secret-id-not-its-value")
    ids = [stack.producer.enqueue("acme", {"to": [f"user{i}@example.org"], "subject": f"Review {i}",
                                           "body": "Please review."}) for i in range(NOTIFICATIONS)]
    stack.start_workers(1, concurrency=4)

    # when: the workers meet AADSTS7000215
    wait_until(lambda: _held(stack, ids), timeout_s=60, what="every notification held")

    # then: nothing failed or was sent; the admin was told once, by an event and an email
    rows = [stack.notification(nid) for nid in ids]
    assert {r["last_error_code"] for r in rows} == {"AADSTS7000215"}
    token_attempts = sum(len(stack.attempts(nid)) for nid in ids)
    assert 1 <= token_attempts < NOTIFICATIONS * 2
    [mail] = wait_until(lambda: [m for m in emulator.smtp_messages() if m["rcpt_tos"] == [ADMIN]],
                        what="the hold email to the admin")
    assert "AADSTS7000215" in str(mail) and emulator.outbox() == []
    held_events = [e for e in recent_events(stack.engine, "acme") if e["kind"] == HELD_EVENT]
    assert [e["code"] for e in held_events] == ["AADSTS7000215"]

    # when: the admin saves the right secret
    _configure(stack, DEMO_CLIENT_SECRET)

    # then: every held notification is sent, once each, and the release is on record
    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    outbox = [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]
    assert sorted(outbox) == sorted(ids)
    kinds = [e["kind"] for e in recent_events(stack.engine, "acme") if e["kind"] in (HELD_EVENT, RELEASED_EVENT)]
    assert kinds == [RELEASED_EVENT, HELD_EVENT]
    assert len([m for m in emulator.smtp_messages() if m["rcpt_tos"] == [ADMIN]]) == 1
    print(f"hold: {NOTIFICATIONS} notifications, {token_attempts} failed token attempts before the hold, "
          f"1 email, then {len(outbox)} sent")


def test_an_expired_hold_fails_its_rows_with_the_original_code(make_stack: Any, emulator: Any) -> None:
    # given: holds that last a moment
    stack = make_stack(TENANTMAIL_HOLD_MAX_S="0.5")
    _configure(stack, "the-secret-id-not-its-value")
    ids = [stack.producer.enqueue("acme", {"to": [f"user{i}@example.org"], "subject": "hi"}) for i in range(3)]

    # when: the workers hold them and nobody fixes the configuration
    stack.start_workers(1)

    # then: the sweeper fails them with the code that held them
    assert set(stack.wait_terminal(ids).values()) == {"failed"}
    n = Notification.__table__  # type: ignore[attr-defined]
    with stack.engine.connect() as conn:
        codes = set(conn.execute(select(n.c.last_error_code).where(n.c.id.in_(ids))).scalars())
    assert codes == {"AADSTS7000215"}
    assert emulator.outbox() == []


def _subscribe(stack: Stack, tenant: str) -> None:
    """An enabled endpoint of the tenant for the hold events (the event outbox is what is checked)."""
    now = datetime.now(UTC)
    with stack.engine.begin() as conn:
        conn.execute(insert(WebhookEndpoint.__table__).values(  # type: ignore[attr-defined]
            id=f"ep_{tenant}", tenant_id=tenant, url="https://hooks.example.org/tenantmail", enabled=True,
            event_types=["notification.held", "notification.released"], secret_enc=stack.box.encrypt("whsec_x"),
            created_at=now, updated_at=now))


def _webhook_events(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    e = WebhookEvent.__table__  # type: ignore[attr-defined]
    with stack.engine.connect() as conn:
        return [(t, p["data"]) for t, p in conn.execute(select(e.c.type, e.c.payload).order_by(e.c.created_at))]


def test_new_notifications_of_a_held_tenant_join_the_hold_without_an_attempt(make_stack: Any, emulator: Any) -> None:
    # given: a tenant on hold after AADSTS7000215, with a webhook endpoint for the hold events
    stack = make_stack()
    _configure(stack, "the-secret-id-not-its-value")
    _subscribe(stack, "acme")
    first = [stack.producer.enqueue("acme", {"to": [f"user{i}@example.org"], "subject": f"Review {i}",
                                             "body": "Please review."}) for i in range(3)]
    stack.start_workers(1, concurrency=4)
    wait_until(lambda: _held(stack, first), timeout_s=60, what="the first notifications held")
    token_requests = len(emulator.requests_log(route="token"))

    # when: more notifications of that tenant arrive while the hold is in force
    later = [stack.producer.enqueue("acme", {"to": [f"later{i}@example.org"], "subject": f"Later {i}",
                                             "body": "Please review."}) for i in range(6)]
    wait_until(lambda: _held(stack, later), timeout_s=30, what="the new notifications held")

    # then: they joined the hold with its code and no attempt; Entra ID was not asked again
    assert all(stack.attempts(nid) == [] for nid in later)
    assert {stack.notification(nid)["last_error_code"] for nid in later} == {"AADSTS7000215"}
    assert {stack.notification(nid)["wait_reason"] for nid in first + later} == {"held"}
    assert len(emulator.requests_log(route="token")) == token_requests

    # when: the admin saves the right secret
    version = _configure(stack, DEMO_CLIENT_SECRET)

    # then: all of them are sent once each; one held and one released event went to the webhook outbox
    assert set(stack.wait_terminal(first + later).values()) == {"sent"}
    outbox = [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]
    assert sorted(outbox) == sorted(first + later)
    events = _webhook_events(stack)
    assert [t for t, _ in events] == ["notification.held", "notification.released"]
    assert events[0][1]["code"] == "AADSTS7000215" and events[0][1]["held"] >= len(first)
    assert events[1][1]["released"] == len(first + later) and events[1][1]["provider_version"] == version


def _security_mailbox(emulator: Any, *, in_policy: bool) -> None:
    """The demo directory with a `security@` mailbox, inside the app's Access Policy group or outside it."""
    directory = copy.deepcopy(demo_directory())
    contoso = directory["tenants"][0]
    contoso["mailboxes"].append({"id": "1d8a6a0e-0000-4000-8000-000000000150", "address": SECURITY})
    if in_policy:
        next(g for g in contoso["groups"] if g["address"] == DEMO_GROUP)["members"].append(SECURITY)
    emulator.set_directory(directory)


def _mail(tag: str, i: int, sender: str) -> dict[str, Any]:
    return {"to": [f"{tag}{i}@example.org"], "subject": f"{tag} {i}", "body": "Please review.", "sender": sender}


def test_an_access_policy_refusal_holds_only_its_sender_and_a_save_sends_each_once(
        make_stack: Any, make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # given: a tenant with two senders, `security` outside the app's Application Access Policy
    _security_mailbox(emulator, in_policy=False)
    stack = make_stack()
    _configure(stack, DEMO_CLIENT_SECRET, SenderIdentity("security", SECURITY, "Security Team"))
    _subscribe(stack, "acme")
    refused = [stack.producer.enqueue("acme", _mail("sec", i, "security")) for i in range(4)]
    sent = [stack.producer.enqueue("acme", _mail("gov", i, "default")) for i in range(4)]
    stack.start_workers(1, concurrency=4)

    # when: the workers meet AccessPolicyDenied for security@ only
    wait_until(lambda: _held(stack, refused), timeout_s=60, what="the security sender's notifications held")

    # then: the default sender's notifications went out; security's are held with the sender's code
    assert set(stack.wait_terminal(sent).values()) == {"sent"}
    assert {stack.notification(nid)["last_error_code"] for nid in refused} == {"AccessPolicyDenied"}
    graph_requests = len(emulator.requests_log(route="sendMail"))
    # and while the hold is in force, new notifications of the other sender are sent, the held sender's join it
    later_sent = [stack.producer.enqueue("acme", _mail("gov-later", i, "default")) for i in range(3)]
    later_held = [stack.producer.enqueue("acme", _mail("sec-later", i, "security")) for i in range(3)]
    assert set(stack.wait_terminal(later_sent).values()) == {"sent"}
    wait_until(lambda: _held(stack, later_held), timeout_s=30, what="the new security notifications held")
    assert all(stack.attempts(nid) == [] for nid in later_held)
    assert len(emulator.requests_log(route="sendMail")) == graph_requests + len(later_sent)
    assert {m["mailbox"] for m in emulator.outbox()} == {DEMO_SENDER}

    # and the admin was told once, naming the sender: event, webhook event, email, page banner
    [held] = [e for e in recent_events(stack.engine, "acme") if e["kind"] == HELD_EVENT]
    assert held["code"] == "AccessPolicyDenied" and held["sender"] == SECURITY and "security" in held["detail"]
    [mail] = wait_until(lambda: [m for m in emulator.smtp_messages() if m["rcpt_tos"] == [ADMIN]],
                        what="the hold email to the admin")
    assert SECURITY in str(mail) and "AccessPolicyDenied" in str(mail)
    webhook = _webhook_events(stack)
    assert [t for t, _ in webhook] == ["notification.held"]
    assert webhook[0][1]["sender"] == {"name": "security", "address": SECURITY}
    page = make_api(stack.settings).client("acme", "viewer").get("/ui/activity").text
    assert "id='holds'" in page and f"data-sender='{SECURITY}'" in page and "Test-ApplicationAccessPolicy" in page

    # when: the admin adds security@ to the policy's group and saves the provider
    _security_mailbox(emulator, in_policy=True)
    _configure(stack, DEMO_CLIENT_SECRET, SenderIdentity("security", SECURITY, "Security Team"))

    # then: every held notification is sent, once each, from its own sender
    assert set(stack.wait_terminal(refused + later_held).values()) == {"sent"}
    outbox = {m["x_headers"].get("X-Tenantmail-Notification-Id"): m["mailbox"] for m in emulator.outbox()}
    assert len(emulator.outbox()) == len(outbox) == len(refused + later_held + sent + later_sent)
    assert {outbox[nid] for nid in refused + later_held} == {SECURITY}
    assert [t for t, _ in _webhook_events(stack)] == ["notification.held", "notification.released"]
    assert len([m for m in emulator.smtp_messages() if m["rcpt_tos"] == [ADMIN]]) == 1
    assert "id='holds'" not in make_api(stack.settings).client("acme", "viewer").get("/ui/activity").text


@pytest.mark.parametrize("code", sorted(SENDER_HOLD_CODES))
def test_a_refusal_of_one_mailbox_holds_only_that_sender(code: str) -> None:
    assert code in HOLD_CODES
    assert hold_scope("acme", code, "Security@Contoso.example") == HoldScope("acme", "security@contoso.example")
    assert hold_scope("acme", code, None) == HoldScope("acme")  # a row stored before named senders


@pytest.mark.parametrize("code", sorted(HOLD_CODES - SENDER_HOLD_CODES))
def test_a_credential_or_consent_error_holds_the_whole_tenant(code: str) -> None:
    assert hold_scope("acme", code, "security@contoso.example") == HoldScope("acme")
