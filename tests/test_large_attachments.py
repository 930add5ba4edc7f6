"""Large attachments end to end: draft → upload session → chunks → send, with real workers, the TLS
emulator, both databases; faults and a crash mid-upload; Mail.ReadWrite checked at enqueue."""

from __future__ import annotations

import base64
import copy
import hashlib
import math
import os
import time
from collections import Counter
from typing import Any

from sqlalchemy import text

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID, demo_directory
from shared.providers import save_graph_provider
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import Stack, wait_until
from tests.test_api_provider import form

CHUNK_BYTES: int = Settings.model_fields["upload_chunk_bytes"].default
_UPLOAD_ROUTES = {"draft", "uploadSession", "uploadChunk", "sendDraft", "deleteMessage"}


def _grant_readwrite(emulator: Any) -> None:
    """The demo app with Mail.ReadWrite consented beside Mail.Send."""
    directory = copy.deepcopy(demo_directory())
    for app in directory["tenants"][0]["apps"]:
        app["roles"] = [*app.get("roles", []), "Mail.ReadWrite"]
    emulator.set_directory(directory)


def _configure(stack: Stack, *, readwrite: bool = True) -> int:
    return save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, sender_name="Reports",
                               azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                               client_secret=DEMO_CLIENT_SECRET, mail_readwrite=readwrite)


def _large(content: bytes, i: int = 0) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Report {i}", "body": "Attached.",
            "attachments": [{"name": "report.bin", "content_type": "application/octet-stream",
                             "content_bytes": base64.b64encode(content).decode()},
                            {"name": "note.txt", "content_type": "text/plain",
                             "content_bytes": base64.b64encode(b"a small one, inline").decode()}]}


def _queued(make_stack: Any, emulator: Any, size: int, **fault: Any) -> tuple[Stack, str, bytes]:
    """Mail.ReadWrite granted, the fault (if any) armed, a configured stack and one notification of `size`
    attachment bytes queued; its workers are the test's to start."""
    _grant_readwrite(emulator)
    if fault:
        emulator.add_fault(**fault)
    stack = make_stack()
    _configure(stack)
    content = os.urandom(size)
    return stack, stack.producer.enqueue("acme", _large(content)), content


def _routes(emulator: Any) -> Counter[str]:
    return Counter(f"{e['method']} {e['route']}" for e in emulator.requests_log() if e["route"] in _UPLOAD_ROUTES)


def _delivered(emulator: Any, nid: str) -> list[dict[str, Any]]:
    return [m for m in emulator.outbox() if m["x_headers"].get("X-Tenantmail-Notification-Id") == nid]


def test_a_20_mb_attachment_is_uploaded_in_chunks_sent_once_and_leaves_no_draft(make_stack: Any,
                                                                               emulator: Any) -> None:
    # given: a tenant whose app holds Mail.ReadWrite and a 20 MB attachment beside a small one
    _grant_readwrite(emulator)
    stack = make_stack()
    _configure(stack)
    content = os.urandom(20 * 1024 * 1024)
    nid = stack.producer.enqueue("acme", _large(content))
    stored = stack.notification(nid)["payload"]["attachments"]
    assert "content_bytes" not in stored[0] and stored[0]["stored_size"] == len(content)  # bytes kept apart
    assert stored[1]["content_bytes"]  # the small one stays inline

    # when
    started = time.monotonic()
    stack.start_workers(1)
    assert stack.wait_terminal([nid], timeout_s=120) == {nid: "sent"}
    elapsed_s = time.monotonic() - started

    # then: the bytes arrived intact, in the expected requests, and nothing is left in the mailbox
    [message] = _delivered(emulator, nid)
    uploaded = [a for a in message["attachments"] if a["uploaded"]]
    inline = [a for a in message["attachments"] if not a["uploaded"]]
    assert uploaded == [{"name": "report.bin", "size": len(content), "contentType": "application/octet-stream",
                         "sha256": hashlib.sha256(content).hexdigest(), "uploaded": True}]
    assert [a["name"] for a in inline] == ["note.txt"]
    assert message["save_to_sent_items"] is False
    chunks = math.ceil(len(content) / CHUNK_BYTES)
    assert _routes(emulator) == {"POST draft": 1, "POST uploadSession": 1, "PUT uploadChunk": chunks,
                                 "POST sendDraft": 1}
    counters = emulator.counters()
    assert counters["upload_bytes"] == len(content) and counters["upload_requests"] == chunks
    puts = [e for e in emulator.requests_log() if e["route"] == "uploadChunk"]
    assert all("Authorization" not in e["headers"] for e in puts)  # the upload URL authenticates itself
    assert emulator.mail_items() == []
    row = stack.notification(nid)
    assert row["draft_id"] is None and not row["possible_duplicate"] and row["attempts"] == 1
    print(f"\n20 MB attachment: {len(content)} bytes in {chunks} chunks, {sum(_routes(emulator).values())} Graph "
          f"requests, {counters['upload_bytes']} bytes uploaded, {elapsed_s:.1f} s from worker start to sent")


def test_a_chunk_dropped_after_it_was_stored_is_resumed_from_the_next_expected_range(make_stack: Any,
                                                                                    emulator: Any) -> None:
    stack, nid, content = _queued(make_stack, emulator, 3 * CHUNK_BYTES // 2 + 7, kind="reset_after_commit",
                                  route="uploadChunk", count=1)
    stack.start_workers(1)

    assert stack.wait_terminal([nid]) == {nid: "sent"}
    [message] = _delivered(emulator, nid)
    assert [a["sha256"] for a in message["attachments"] if a["uploaded"]] == [hashlib.sha256(content).hexdigest()]
    # the first chunk was stored, its answer lost: the session's status said where to go on. aiohttp resends
    # an idempotent PUT once by itself when a reused connection drops; the emulator answers that one 416.
    routes = _routes(emulator)
    assert routes["PUT uploadChunk"] in (2, 3) and routes["GET uploadChunk"] == 1
    assert (routes["POST draft"], routes["POST uploadSession"], routes["POST sendDraft"]) == (1, 1, 1)
    assert emulator.counters()["upload_bytes"] == len(content)  # every byte stored once
    assert stack.notification(nid)["attempts"] == 1 and emulator.mail_items() == []


def test_chunks_failing_past_the_retries_restart_the_upload_with_a_new_draft(make_stack: Any, emulator: Any) -> None:
    # 1 try + 3 resumes fail; the next attempt goes through after one more
    stack, nid, _ = _queued(make_stack, emulator, CHUNK_BYTES + 5, kind="503", route="uploadChunk", count=5)
    stack.start_workers(1)

    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert len(_delivered(emulator, nid)) == 1 and len(emulator.outbox()) == 1
    routes = _routes(emulator)
    assert routes["POST draft"] == 2 and routes["DELETE deleteMessage"] == 1 and routes["POST sendDraft"] == 1
    assert [a["outcome"] for a in stack.attempts(nid)] == ["retry", "sent"]
    assert stack.attempts(nid)[0]["http_status"] == 503
    assert emulator.mail_items() == []


def test_a_worker_killed_mid_upload_leaves_no_draft_and_the_message_goes_once(make_stack: Any,
                                                                             emulator: Any) -> None:
    # given: the first chunk is held at the emulator while the worker uploads it
    stack, nid, content = _queued(make_stack, emulator, CHUNK_BYTES + 11, kind="hold", route="uploadChunk", count=1)
    victim, = stack.start_workers(1)
    wait_until(lambda: emulator.counters()["upload_requests"] == 1 and stack.notification(nid)["draft_id"],
               what="the draft recorded and its first chunk in flight")
    orphan = stack.notification(nid)["draft_id"]

    # when: the worker dies there and another takes over
    stack.kill(victim)
    emulator.release_held()
    stack.start_workers(1)

    # then: the dead worker's draft was deleted, a new one sent once, never flagged as a possible duplicate
    assert stack.wait_terminal([nid], timeout_s=90) == {nid: "sent"}
    [message] = _delivered(emulator, nid)
    assert message["draft_id"] != orphan
    assert [a["sha256"] for a in message["attachments"] if a["uploaded"]] == [hashlib.sha256(content).hexdigest()]
    assert _routes(emulator)["DELETE deleteMessage"] == 1
    assert emulator.mail_items() == []
    row = stack.notification(nid)
    assert row["draft_id"] is None and not row["possible_duplicate"]


def test_upload_volume_is_kept_under_the_limit_fleet_wide(make_stack: Any, emulator: Any) -> None:
    # given: a 6 MB per 3 s upload limit at Graph and the same kept by the workers, and two 4 MB messages
    _grant_readwrite(emulator)
    emulator.set_config(upload_bytes_per_window=6_100_000, upload_window_s=3.0)
    stack = make_stack(TENANTMAIL_UPLOAD_BYTES_PER_WINDOW="6000000", TENANTMAIL_UPLOAD_WINDOW_S="3")
    _configure(stack)
    ids = [stack.producer.enqueue("acme", _large(os.urandom(4_000_000), i)) for i in range(2)]
    stack.start_workers(2)

    assert set(stack.wait_terminal(ids).values()) == {"sent"}
    received = sorted(m["received_at_epoch_s"] for m in emulator.outbox())
    assert received[1] - received[0] >= 2.5  # the second waited for the 3 s window (less the first's token fetch)
    assert emulator.counters()["throttled_by_reason"].get("upload_volume", 0) == 0
    assert all(a["outcome"] == "sent" for nid in ids for a in stack.attempts(nid))


def test_large_attachment_needs_mail_readwrite_seen_at_save(api: ApiServer, emulator: Any) -> None:
    admin, sender = api.client("acme"), api.client("acme", "sender")
    content = os.urandom(4 * 1024 * 1024)
    # given: the demo app holds Mail.Send only
    saved = admin.put("/v1/email-provider", json=form())
    assert saved.status_code == 200 and saved.json()["mail_readwrite"] is False, saved.text

    refused = sender.post("/v1/notifications", json=_large(content))
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["field"] == "attachments[0]" and "Mail.ReadWrite" in error["message"]
    assert "admin consent" in error["message"] and "Application Mail.ReadWrite" in error["message"]
    small = sender.post("/v1/notifications", json={**_large(b""), "attachments": _large(b"x")["attachments"][1:]})
    assert small.status_code == 201, small.text  # ordinary mail is unaffected

    # when: Mail.ReadWrite is consented and the provider saved again
    _grant_readwrite(emulator)
    assert admin.put("/v1/email-provider", json=form()).json()["mail_readwrite"] is True
    accepted = sender.post("/v1/notifications", json=_large(content))  # over the 5 MB body limit of other routes

    # then: accepted, its bytes kept in their own table
    assert accepted.status_code == 201, accepted.text
    with api.engine.connect() as conn:
        size, digest = conn.execute(text("SELECT size_bytes, sha256 FROM notification_attachment")).one()
    assert size == len(content) and digest == hashlib.sha256(content).hexdigest()
    history = admin.get("/v1/email-provider/history").json()["items"]
    assert "mail_readwrite" in history[0]["changed_fields"]
