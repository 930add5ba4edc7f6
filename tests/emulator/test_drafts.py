"""The emulator's large-attachment routes: drafts, upload sessions, chunks, send, delete, and their limits."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import msal
import pytest
import requests

from emulator.control_client import EmulatorHandle
from emulator.demo import demo_directory
from emulator.directory import DEMO_SENDER
from tests.emulator.conftest import GRAPH_SCOPE

MIB = 1024 * 1024
MESSAGE = {"subject": "Report", "body": {"contentType": "Text", "content": "Attached."},
           "toRecipients": [{"emailAddress": {"address": "someone@example.com"}}]}
DELETE_AFTER_SUBMIT = [{"id": "Boolean 0x0E01", "value": "true"}]


@pytest.fixture
def token(emulator: EmulatorHandle, make_app: Callable[..., msal.ConfidentialClientApplication]) -> str:
    directory = copy.deepcopy(demo_directory())
    for app in directory["tenants"][0]["apps"]:
        app["roles"] = [*app.get("roles", []), "Mail.ReadWrite"]
    emulator.set_directory(directory)
    return str(make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"])


class Mailbox:
    """Graph calls on the demo sender's mailbox."""

    def __init__(self, http: requests.Session, emulator: EmulatorHandle, token: str) -> None:
        self.http, self.base, self.auth = http, f"{emulator.graph_base_url}/users/{DEMO_SENDER}", \
            {"Authorization": f"Bearer {token}"}

    def draft(self, **extra: Any) -> str:
        response = self.http.post(f"{self.base}/messages", json={**MESSAGE, **extra}, headers=self.auth, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def session(self, draft: str, size: int) -> requests.Response:
        item = {"AttachmentItem": {"attachmentType": "file", "name": "big.bin", "size": size}}
        return self.http.post(f"{self.base}/messages/{draft}/attachments/createUploadSession", json=item,
                              headers=self.auth, timeout=30)

    def put(self, url: str, data: bytes, start: int, total: int, **headers: str) -> requests.Response:
        headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}", **headers}
        return self.http.put(url, data=data, headers=headers, timeout=30)

    def send(self, draft: str) -> requests.Response:
        return self.http.post(f"{self.base}/messages/{draft}/send", headers=self.auth, timeout=30)


@pytest.fixture
def box(http: requests.Session, emulator: EmulatorHandle, token: str) -> Mailbox:
    return Mailbox(http, emulator, token)


def test_a_draft_uploaded_in_chunks_is_sent_with_its_hash_and_deleted_after_submit(box: Mailbox,
                                                                                   emulator: EmulatorHandle) -> None:
    content = bytes(range(256)) * (4 * MIB // 256 + 1)
    draft = box.draft(singleValueExtendedProperties=DELETE_AFTER_SUBMIT)
    session = box.session(draft, len(content))
    assert session.status_code == 201 and session.json()["nextExpectedRanges"] == ["0-"]
    url = session.json()["uploadUrl"]
    first = box.put(url, content[:2 * MIB], 0, len(content))
    assert first.status_code == 200 and first.json()["nextExpectedRanges"] == [f"{2 * MIB}-"]
    assert box.http.get(url, timeout=30).json()["nextExpectedRanges"] == [f"{2 * MIB}-"]
    last = box.put(url, content[2 * MIB:], 2 * MIB, len(content))
    assert last.status_code == 201 and last.headers["Location"]

    assert box.send(draft).status_code == 202
    [sent] = emulator.outbox()
    assert sent["attachments"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert sent["save_to_sent_items"] is False and sent["draft_id"] == draft
    assert emulator.mail_items() == []
    assert emulator.counters()["upload_bytes"] == len(content)


def test_a_draft_without_delete_after_submit_stays_in_sent_items(box: Mailbox, emulator: EmulatorHandle) -> None:
    draft = box.draft()
    assert box.send(draft).status_code == 202
    assert [(i["id"], i["folder"]) for i in emulator.mail_items()] == [(draft, "sentitems")]
    assert box.send(draft).status_code == 404  # a sent message is no draft any more


def test_upload_checks_range_authorization_token_and_size(box: Mailbox, emulator: EmulatorHandle) -> None:
    draft = box.draft()
    assert box.session(draft, MIB).json()["error"]["code"] == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    assert box.session(draft, 40 * MIB).json()["error"]["code"] == "ErrorMessageSizeExceeded"  # over 35 MB
    url = box.session(draft, 4 * MIB).json()["uploadUrl"]
    chunk = b"x" * MIB
    assert box.put(url, chunk, MIB, 4 * MIB).status_code == 416  # not the next expected byte
    assert box.put(url, chunk, 0, 5 * MIB).status_code == 400  # not the session's size
    assert box.put(url, chunk, 0, 4 * MIB, Authorization="Bearer x").status_code == 401
    assert box.put(url.replace("authtoken=", "authtoken=x"), chunk, 0, 4 * MIB).status_code == 401
    assert box.put(url, b"x" * (4 * MIB + 1), 0, 4 * MIB + 1).status_code == 400
    assert box.put(url, chunk, 0, 4 * MIB).status_code == 200
    emulator.advance_clock(emulator.get_config()["upload_session_ttl_s"] + 1)
    assert box.put(url, chunk, MIB, 4 * MIB).status_code == 404


def test_uploads_over_the_volume_limit_get_429_incoming_bytes_with_retry_after(box: Mailbox,
                                                                              emulator: EmulatorHandle) -> None:
    emulator.set_config(upload_bytes_per_window=5 * MIB, upload_window_s=300.0)
    draft = box.draft()
    url = box.session(draft, 8 * MIB).json()["uploadUrl"]
    assert box.put(url, b"x" * 4 * MIB, 0, 8 * MIB).status_code == 200
    refused = box.put(url, b"x" * 4 * MIB, 4 * MIB, 8 * MIB)
    assert refused.status_code == 429 and "IncomingBytes" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    emulator.advance_clock(301)
    assert box.put(url, b"x" * 4 * MIB, 4 * MIB, 8 * MIB).status_code == 201


def test_drafts_need_mail_readwrite(http: requests.Session, emulator: EmulatorHandle,
                                    make_app: Callable[..., msal.ConfidentialClientApplication]) -> None:
    token = make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"]  # Mail.Send only
    response = http.post(f"{emulator.graph_base_url}/users/{DEMO_SENDER}/messages", json=MESSAGE,
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 403 and response.json()["error"]["code"] == "ErrorAccessDenied"
