"""Resend through the API: POST /v1/notifications/{id}:retry and the bulk POST /v1/notifications:retry,
against real workers and the emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.settings import Settings
from tests.api_harness import ApiServer, PageSession
from tests.stack import Stack

PROVIDER = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET, "sender_name": "Governance"}


def _outbox_ids(emulator: Any) -> list[str]:
    return [m["x_headers"].get("X-Tenantmail-Notification-Id") for m in emulator.outbox()]


def test_resending_a_failed_notification_twice_sends_it_once_keeping_its_history(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # given: a notification failed by a per-message error
    stack = make_stack()
    admin = make_api(stack.settings).client("acme")
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    emulator.add_fault(kind="status", route="sendMail", count=1, status=400, code="ErrorInvalidRecipients",
                       message="At least one recipient is not valid.")
    nid = admin.post("/v1/notifications", json={"to": ["ana@example.org"], "subject": "Review"}).json()["id"]
    stack.start_workers(1, concurrency=2)
    assert stack.wait_terminal([nid]) == {nid: "failed"}

    # when: an admin resends it twice; a sender tries too
    first = admin.post(f"/v1/notifications/{nid}:retry")
    second = admin.post(f"/v1/notifications/{nid}:retry")
    refused = make_api(stack.settings).client("acme", "sender").post(f"/v1/notifications/{nid}:retry")

    # then: one resend, one copy sent, both attempts on record, not flagged
    assert (first.status_code, first.json()["resent"]) == (200, True)
    assert (second.status_code, second.json()["resent"]) == (200, False)
    assert refused.status_code == 403
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert _outbox_ids(emulator) == [nid]
    assert [a["outcome"] for a in stack.attempts(nid)] == ["failed", "sent"]
    assert stack.notification(nid)["possible_duplicate"] is False
    assert admin.post(f"/v1/notifications/{nid}:retry").json() | {"attempts": 0} == {
        "id": nid, "resent": False, "state": "sent", "possible_duplicate": False, "attempts": 0}


def test_bulk_resend_of_ambiguous_notifications_flags_them_possible_duplicates(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # given: three notifications Graph committed and then answered 504 (policy: give up at once)
    stack = make_stack(TENANTMAIL_AMBIGUOUS_POLICY="give_up")
    admin = make_api(stack.settings).client("acme")
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    emulator.add_fault(kind="504_after_commit", route="sendMail", count=3)
    ids = [admin.post("/v1/notifications", json={"to": [f"u{i}@example.org"], "subject": "Review"}).json()["id"]
           for i in range(3)]
    stack.start_workers(1, concurrency=1)
    assert set(stack.wait_terminal(ids).values()) == {"ambiguous"}

    # when: an admin resends every ambiguous one, twice, and asks for a bad limit
    bulk = admin.post("/v1/notifications:retry", json={"state": "ambiguous", "limit": 1000})
    again = admin.post("/v1/notifications:retry", json={"state": "ambiguous"})
    bad = admin.post("/v1/notifications:retry", json={"limit": 1001})

    # then: each went out once more, flagged, with its ambiguous attempt kept
    assert bulk.status_code == 200 and sorted(bulk.json()["ids"]) == sorted(ids)
    assert again.json() == {"resent": 0, "ids": []}
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "limit"
    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    assert sorted(_outbox_ids(emulator)) == sorted(ids * 2)  # the 504s had committed: the copies are flagged
    for nid in ids:
        assert stack.notification(nid)["possible_duplicate"] is True
        assert [a["outcome"] for a in stack.attempts(nid)] == ["ambiguous", "sent"]


def _page_session(api: ApiServer, role: str) -> requests.Session:
    session = PageSession()
    session.trust_env = False
    assert session.post(api.base_url + "/ui/login", data={"key": api.key("acme", role)}, timeout=30).ok
    return session


def test_page_retry_button_resends_a_failed_notification_for_admins_only(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # given: a failed notification
    stack = make_stack()
    api = make_api(stack.settings)
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    emulator.add_fault(kind="status", route="sendMail", count=1, status=400, code="ErrorMessageSizeExceeded")
    nid = admin.post("/v1/notifications", json={"to": ["ana@example.org"], "subject": "Review"}).json()["id"]
    stack.start_workers(1, concurrency=2)
    assert stack.wait_terminal([nid]) == {nid: "failed"}

    # when: a viewer and an admin open the activity page, and the admin clicks Retry
    viewer_page = _page_session(api, "viewer").get(api.base_url + "/ui/activity", timeout=30).text
    session = _page_session(api, "admin")
    assert f"id='retry-{nid}'" in session.get(api.base_url + "/ui/activity", timeout=30).text
    clicked = session.post(api.base_url + "/ui/activity/retry", data={"id": nid}, timeout=30)

    # then: only the admin sees the button; the notification is sent
    assert f"retry-{nid}" not in viewer_page
    assert clicked.status_code == 200 and "id='resent'" in clicked.text
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert _outbox_ids(emulator) == [nid]
