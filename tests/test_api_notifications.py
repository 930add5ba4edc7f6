"""Producer endpoints, activity, stats and tenant isolation through the real API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import Stack

MESSAGE = {"to": ["ana@example.org"], "subject": "Review due", "body": "<p>Hi</p>", "body_type": "html"}


def test_post_notification_returns_201_and_repeats_the_id_for_a_repeated_key(api: ApiServer) -> None:
    sender = api.client("acme", "sender")
    first = sender.post("/v1/notifications", json={**MESSAGE, "idempotency_key": "k1"})
    assert first.status_code == 201, first.text
    again = sender.post("/v1/notifications", json={**MESSAGE, "idempotency_key": "k1"})
    assert again.json()["id"] == first.json()["id"]
    detail = sender.get(f"/v1/notifications/{first.json()['id']}").json()
    assert detail["state"] == "queued" and detail["to"] == ["ana@example.org"] and detail["attempts"] == []


def test_invalid_notifications_get_422_naming_the_field(api: ApiServer) -> None:
    sender = api.client("acme", "sender")
    bad = sender.post("/v1/notifications", json={**MESSAGE, "to": ["not-an-address"]})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "to[0].address"
    unknown = sender.post("/v1/notifications", json={**MESSAGE, "colour": "red"})
    assert unknown.status_code == 422 and "colour" in unknown.json()["error"]["field"]
    batch = sender.post("/v1/notifications:batch", json={"items": [MESSAGE, {**MESSAGE, "subject": "a\r\nb"}]})
    assert batch.status_code == 422 and batch.json()["error"]["field"] == "items[1].subject"
    assert api.client("acme", "viewer").get("/v1/activity").json()["items"] == []


def test_viewer_cannot_enqueue(api: ApiServer) -> None:
    assert api.client("acme", "viewer").post("/v1/notifications", json=MESSAGE).status_code == 403


def test_a_tenant_cannot_read_another_tenants_notification(api: ApiServer) -> None:
    nid = api.client("acme", "sender").post("/v1/notifications", json=MESSAGE).json()["id"]
    other = api.client("globex", "admin")
    response = other.get(f"/v1/notifications/{nid}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert other.get("/v1/activity").json()["items"] == []
    assert other.get("/v1/stats").json()["total"] == 0


def test_activity_pages_with_a_cursor_and_filters(api: ApiServer) -> None:
    sender = api.client("acme", "sender")
    ids = sender.post("/v1/notifications:batch", json={"items": [
        {**MESSAGE, "subject": f"n{i}", "to": [f"user{i}@example.org"]} for i in range(5)]}).json()["ids"]
    seen: list[str] = []
    cursor = ""
    while True:
        page = sender.get("/v1/activity", params={"limit": 2, "cursor": cursor}).json()
        seen += [i["id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    # the recipient filter is an exact address, whatever its case: a part of one matches nothing
    assert [i["to"] for i in sender.get("/v1/activity", params={"recipient": "USER3@example.org"}).json()[
        "items"]] == [["user3@example.org"]]
    assert sender.get("/v1/activity", params={"recipient": "user3@"}).json()["items"] == []
    assert sender.get("/v1/activity", params={"status": "sent"}).json()["items"] == []
    assert sender.get("/v1/activity", params={"status": "bogus"}).json()["error"]["field"] == "status"
    assert sender.get("/v1/activity", params={"cursor": "!!"}).json()["error"]["field"] == "cursor"
    stats = sender.get("/v1/stats", params={"window_s": 3600}).json()
    assert stats["total"] == 5 and stats["by_status"]["queued"] == 5


def test_after_a_rejected_save_notifications_still_go_out_with_the_previous_config(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    stack = make_stack()
    api = make_api(stack.settings)
    admin = api.client("acme")
    good = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET, "sender_name": "Governance"}
    assert admin.put("/v1/email-provider", json=good).status_code == 200
    assert admin.put("/v1/email-provider", json={**good, "client_secret": "wrong-secret-value"}).status_code == 422
    nid = admin.post("/v1/notifications", json=MESSAGE).json()["id"]
    stack.start_workers(1, concurrency=2)
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    detail = admin.get(f"/v1/notifications/{nid}").json()
    assert detail["sender"] == DEMO_SENDER and detail["attempts"][0]["outcome"] == "sent"
    assert [m for m in emulator.outbox(mailbox=DEMO_SENDER)]
    assert admin.get("/v1/stats").json()["by_status"]["sent"] == 1
