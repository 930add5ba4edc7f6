"""Named senders end to end: API and page, producer, real workers, the TLS emulator, both databases."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from sqlalchemy import text

from emulator.demo import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_GROUP,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    demo_directory,
)
from shared.errors import ValidationFailed
from shared.providers import save_graph_provider
from shared.senders import SenderIdentity
from tests.api_harness import ApiServer, PageSession
from tests.stack import Stack, wait_until
from tests.test_api_provider import form

SECURITY = "security@contoso.example"
BILLING = "billing@contoso.example"


def _with_mailboxes(emulator: Any, *addresses: str) -> None:
    """The demo directory with more mailboxes inside the app's Application Access Policy group."""
    directory = copy.deepcopy(demo_directory())
    contoso = directory["tenants"][0]
    for n, address in enumerate(addresses):
        contoso["mailboxes"].append({"id": f"1d8a6a0e-0000-4000-8000-0000000001{n:02d}", "address": address})
        next(g for g in contoso["groups"] if g["address"] == DEMO_GROUP)["members"].append(address)
    emulator.set_directory(directory)


def _configure(stack: Stack, *senders: SenderIdentity, tenant: str = "acme") -> int:
    return save_graph_provider(stack.engine, stack.box, tenant, sender_address=DEMO_SENDER, sender_name="Governance",
                               azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                               client_secret=DEMO_CLIENT_SECRET, senders=senders)


def _msg(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Notice {i}", "body": "Hello.", **extra}


_SECURITY = SenderIdentity("security", SECURITY, "Security Team", "soc@contoso.example")


# --- the API -------------------------------------------------------------------------------------


def test_senders_are_saved_shown_in_history_and_restored(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    senders = {"security": {"address": SECURITY, "display_name": "Security Team", "reply_to": "soc@contoso.example"},
               "default": {"daily_recipient_limit": 5000}}
    first = admin.put("/v1/email-provider", json=form(senders=senders))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["senders"]["security"] == {"address": SECURITY, "display_name": "Security Team",
                                           "reply_to": "soc@contoso.example", "daily_recipient_limit": None}
    assert body["senders"]["default"]["address"] == DEMO_SENDER
    assert body["senders"]["default"]["daily_recipient_limit"] == 5000
    # The document saves back as it is (GET → PUT), and removing a sender is a change the history names.
    again = admin.put("/v1/email-provider", json=form(senders=body["senders"]))
    assert again.status_code == 200, again.text
    assert admin.put("/v1/email-provider", json=form()).json()["senders"].keys() == {"default"}
    history = admin.get("/v1/email-provider/history").json()["items"]
    assert "senders.security" in history[0]["changed_fields"]  # v3 removed it
    assert history[1]["changed_fields"] == []  # v2 changed nothing
    assert {"senders.security", "senders.default"} <= set(history[2]["changed_fields"])

    restored = admin.post("/v1/email-provider/history/1:restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["senders"]["security"]["address"] == SECURITY
    assert "senders.security" in admin.get("/v1/email-provider/history").json()["items"][0]["changed_fields"]


@pytest.mark.parametrize(("senders", "field"), [
    ({"Security": {"address": SECURITY}}, "senders"),
    ({"security": {}}, "senders.security.address"),
    ({"security": {"address": "not-an-address"}}, "senders.security.address"),
    ({"security": {"address": SECURITY, "display_name": "A\r\nBcc: x@example.org"}}, "senders.security.display_name"),
    ({"security": {"address": SECURITY, "daily_recipient_limit": 0}}, "senders.security.daily_recipient_limit"),
    ({"security": {"address": SECURITY, "colour": "red"}}, "senders.security.colour"),
    ({"security": {"address": DEMO_SENDER}}, "senders.security.address"),
    ({"a": {"address": SECURITY}, "b": {"address": SECURITY.upper()}}, "senders.b.address"),
    ({"default": {"address": SECURITY}}, "senders.default.address"),
    ("security", "senders"),
])
def test_bad_senders_are_422_naming_the_field_and_nothing_is_saved(api: ApiServer, senders: Any, field: str) -> None:
    admin = api.client("acme")
    response = admin.put("/v1/email-provider", json=form(senders=senders))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert admin.get("/v1/email-provider").json()["provider"] == "platform"


def test_unknown_sender_is_422_at_enqueue_naming_the_field(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form(senders={"security": {"address": SECURITY}})).status_code == 200
    sender = api.client("acme", "sender")
    bad = sender.post("/v1/notifications", json=_msg(sender="billing"))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "sender", bad.text
    batch = sender.post("/v1/notifications:batch", json={"items": [_msg(1, sender="security"), _msg(2, sender="nope")]})
    assert batch.status_code == 422 and batch.json()["error"]["field"] == "items[1].sender", batch.text
    malformed = sender.post("/v1/notifications", json=_msg(sender="Not A Name"))
    assert malformed.status_code == 422 and malformed.json()["error"]["field"] == "sender"
    other = api.client("globex", "sender")  # on the platform default: only `default` exists
    assert other.post("/v1/notifications", json=_msg(sender="security")).status_code == 422
    with api.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM notification")) == 0  # nothing half-written
    assert sender.post("/v1/notifications", json=_msg(sender="security")).status_code == 201
    assert sender.post("/v1/notifications", json=_msg(sender="default")).status_code == 201


def test_send_test_goes_from_the_named_sender(api: ApiServer, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form(senders={"security": {"address": SECURITY}})).status_code == 200
    result = admin.post("/v1/email-provider/test", json={"to": "someone@example.org", "sender": "security"})
    assert result.status_code == 200 and result.json()["result"] == "sent", result.text
    assert result.json()["sender"] == SECURITY and result.json()["named_sender"] == "security"
    assert [m["mailbox"] for m in emulator.outbox()] == [SECURITY]
    unknown = admin.post("/v1/email-provider/test", json={"to": "someone@example.org", "sender": "billing"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "sender"
    assert len(emulator.outbox()) == 1
    # The setup guide scopes the app to every sender, so each is inside the RBAC scope or Access Policy.
    assert admin.get("/v1/email-provider/setup").json()["senders"] == [DEMO_SENDER, SECURITY]


def test_page_edits_senders_and_offers_them_for_send_test(api: ApiServer, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    page = PageSession()  # its POSTs carry the form's CSRF token
    page.trust_env = False
    base = api.base_url
    assert page.post(base + "/ui/login", data={"key": api.key("acme", "admin")}, timeout=30).status_code == 200
    values = {k: v for k, v in form().items() if k != "service"}
    bad = page.post(base + "/ui/email-provider", data={**values, "senders": "security | not-an-address"},
                    timeout=30)
    assert "id='error-senders'" in bad.text and "senders.security.address" in bad.text
    lines = f"security | {SECURITY} | Security Team\ndefault | | | | 7000"
    saved = page.post(base + "/ui/email-provider", data={**values, "senders": lines}, timeout=30)
    assert "id='saved'" in saved.text, saved.text
    assert "id='sender-security'" in saved.text and re.search(r"<option value='security'", saved.text)
    edit = page.get(base + "/ui/email-provider?edit=1", timeout=30).text
    assert f"security | {SECURITY} | Security Team" in edit and "default | | | | 7000" in edit
    tested = page.post(base + "/ui/email-provider/test", data={"to": "someone@example.org", "sender": "security"},
                       timeout=30)
    assert "id='test-result'" in tested.text and "Sent." in tested.text
    assert [m["mailbox"] for m in emulator.outbox()] == [SECURITY]


# --- delivery ------------------------------------------------------------------------------------


def test_each_notification_goes_from_its_named_sender(make_stack: Any, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY, BILLING)
    stack = make_stack()
    _configure(stack, _SECURITY, SenderIdentity("billing", BILLING))
    ids = {stack.producer.enqueue("acme", _msg(0)): DEMO_SENDER,
           stack.producer.enqueue("acme", _msg(1, sender="security")): SECURITY,
           stack.producer.enqueue("acme", _msg(2, sender="billing")): BILLING,
           stack.producer.enqueue("acme", _msg(3, sender="default")): DEMO_SENDER}
    stack.start_workers(1)

    assert set(stack.wait_terminal(list(ids)).values()) == {"sent"}

    by_id = {m["x_headers"]["X-Tenantmail-Notification-Id"]: m for m in emulator.outbox()}
    for nid, address in ids.items():
        assert by_id[nid]["mailbox"] == address
        assert by_id[nid]["message"]["from"]["emailAddress"]["address"] == address
        assert stack.notification(nid)["sender"] == address
    security = by_id[next(n for n, a in ids.items() if a == SECURITY)]["message"]
    assert security["from"]["emailAddress"]["name"] == "Security Team"
    assert security["replyTo"] == [{"emailAddress": {"address": "soc@contoso.example"}}]


def test_producer_rejects_unknown_sender_and_stores_nothing(make_stack: Any) -> None:
    stack = make_stack()
    _configure(stack, _SECURITY)
    with pytest.raises(ValidationFailed) as raised:
        stack.producer.enqueue_many([("acme", _msg(0, sender="security")), ("acme", _msg(1, sender="billing"))])
    assert raised.value.field == "[1].message.sender"
    with stack.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM notification")) == 0


def test_a_version_without_senders_reads_its_columns_as_default(make_stack: Any, emulator: Any) -> None:
    stack = make_stack()
    _configure(stack)
    with stack.engine.begin() as conn:  # as stored before migration 0009
        conn.execute(text("UPDATE provider_config SET senders = NULL"))
    nid = stack.producer.enqueue("acme", _msg(0))
    with pytest.raises(ValidationFailed):
        stack.producer.enqueue("acme", _msg(1, sender="security"))
    stack.start_workers(1)

    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert emulator.outbox()[0]["mailbox"] == DEMO_SENDER


def test_a_sender_removed_after_enqueue_fails_its_notification_with_a_diagnosis(make_stack: Any,
                                                                              emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    stack = make_stack()
    _configure(stack, _SECURITY)
    gone = stack.producer.enqueue("acme", _msg(0, sender="security"))
    kept = stack.producer.enqueue("acme", _msg(1))
    _configure(stack)  # a new version without `security`
    stack.start_workers(1)

    assert stack.wait_terminal([gone, kept]) == {gone: "failed", kept: "sent"}
    assert stack.notification(gone)["last_error_code"] == "UnknownSender"
    assert [m["mailbox"] for m in emulator.outbox()] == [DEMO_SENDER]


def test_a_429_on_one_sender_does_not_hold_back_another(make_stack: Any, emulator: Any) -> None:
    _with_mailboxes(emulator, SECURITY)
    stack = make_stack()
    _configure(stack, _SECURITY)
    # The default mailbox stays throttled far longer than the test may run; security must still go.
    emulator.add_fault(kind="429", route="sendMail", mailbox=DEMO_SENDER, retry_after="3600")
    throttled = stack.producer.enqueue("acme", _msg(0))
    stack.start_workers(1)
    wait_until(lambda: stack.notification(throttled)["last_status"] == 429, what="the default sender's 429")
    later = [stack.producer.enqueue("acme", _msg(i, sender="security")) for i in range(1, 4)]

    assert set(stack.wait_terminal(later).values()) == {"sent"}
    assert stack.states([throttled]) == {throttled: "retry_wait"}
    assert {m["mailbox"] for m in emulator.outbox()} == {SECURITY}
