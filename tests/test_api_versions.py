"""Saves that cannot race, ETag / If-Match, restoring a version, and a credential's expiry kept or read
from Graph: through the real API, emulator, Redis and both databases."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID, demo_directory
from shared.providers import current_config
from tests.api_harness import ApiServer, PageSession
from tests.test_api_provider import form

WRONG = "s1~the-secret-id-pasted-instead"


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # polling a condition, not waiting a fixed time


def test_concurrent_saves_answer_200_412_or_422_with_consecutive_versions(api: ApiServer, emulator: Any) -> None:
    # Given a saved configuration (version 1) and 12 admins saving at once: right and wrong secrets,
    # half of them naming the version they edited
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form()).status_code == 200
    clients = [api.client("acme") for _ in range(12)]

    def save(i: int) -> int:
        body = form(client_secret=DEMO_CLIENT_SECRET if i % 2 == 0 else WRONG, sender_name=f"Admin {i}")
        headers = {"If-Match": '"v1"'} if i % 4 < 2 else {}
        return clients[i].put("/v1/email-provider", json=body, headers=headers).status_code

    # When they all save concurrently, their credential checks held at Entra ID and released together
    # so that the stores race
    emulator.add_fault(kind="hold", route="token", count=12)
    with ThreadPoolExecutor(max_workers=12) as pool:
        pending = pool.map(save, range(12))
        _wait_for(lambda: sum(emulator.counters()["token_requests"].values()) >= 13)
        emulator.release_held()
        statuses = list(pending)

    # Then no server error, wrong secrets 422, at most one If-Match save won, and the history is complete
    assert set(statuses) <= {200, 412, 422}, statuses
    assert [statuses[i] for i in range(1, 12, 2)] == [422] * 6
    saved = statuses.count(200)
    assert 1 <= saved and [statuses[i] for i in (0, 4, 8)].count(200) <= 1
    history = admin.get("/v1/email-provider/history").json()["items"]
    assert [h["version"] for h in history] == list(range(saved + 1, 0, -1))
    assert admin.get("/v1/email-provider").json()["version"] == saved + 1
    print(f"concurrent saves: statuses {sorted(statuses)}, versions 1..{saved + 1}")


def test_if_match_of_an_older_version_gets_412_naming_the_version_in_force(api: ApiServer) -> None:
    admin = api.client("acme")
    first = admin.put("/v1/email-provider", json=form())
    assert first.headers["ETag"] == '"v1"'
    assert admin.put("/v1/email-provider", json=form(sender_name="Second"), headers={"If-Match": '"v1"'}).ok
    stale = admin.put("/v1/email-provider", json=form(sender_name="Third"), headers={"If-Match": '"v1"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"v2"'
    assert stale.json()["error"]["current_version"] == 2 and "version 2" in stale.json()["error"]["message"]
    assert admin.get("/v1/email-provider").json()["sender_name"] == "Second"
    bad = admin.put("/v1/email-provider", json=form(), headers={"If-Match": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "If-Match"
    assert admin.delete("/v1/email-provider", headers={"If-Match": '"v1"'}).status_code == 412


def test_restore_brings_back_an_older_version_after_revalidating_it(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form(sender_name="First"))
    admin.delete("/v1/email-provider")
    restored = admin.post("/v1/email-provider/history/1:restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["version"] == 3 and restored.json()["sender_name"] == "First"
    assert restored.headers["ETag"] == '"v3"'
    history = admin.get("/v1/email-provider/history").json()["items"]
    assert history[0]["action"] == "restored" and history[0]["restored_from"] == 1
    assert "client_secret" in history[0]["changed_fields"] and history[0]["actor"].startswith("key:")
    assert admin.post("/v1/email-provider/history/2:restore").json()["provider"] == "platform"
    assert admin.post("/v1/email-provider/history/99:restore").status_code == 404
    assert admin.post("/v1/email-provider/history/x:restore").json()["error"]["field"] == "version"
    assert admin.post("/v1/email-provider/history/1:restore", headers={"If-Match": '"v2"'}).status_code == 412
    assert api.client("acme", "viewer").post("/v1/email-provider/history/1:restore").status_code == 403


def test_restore_of_a_version_whose_secret_no_longer_works_answers_422_and_keeps_the_current(
    api: ApiServer, emulator: Any
) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form())
    admin.delete("/v1/email-provider")
    directory = demo_directory()
    directory["tenants"][0]["apps"][0]["secrets"] = [{"id": "s2", "value": "a-brand-new-secret-value"}]
    emulator.set_directory(directory)  # the old secret was deleted in Entra ID
    refused = admin.post("/v1/email-provider/history/1:restore")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "AADSTS7000215"
    assert admin.get("/v1/email-provider").json()["version"] == 2


def test_a_save_that_keeps_the_stored_secret_keeps_its_expiry(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form(secret_expires_at="2027-06-30"))
    kept = admin.put("/v1/email-provider", json=form(client_secret="", secret_expires_at="", sender_name="X"))
    assert kept.status_code == 200
    assert kept.json()["client_secret"]["expires_at"] == "2027-06-30T00:00:00+00:00"
    assert kept.json()["client_secret"]["expiry_source"] == "kept"


def test_expiry_is_read_from_graph_when_the_app_may_read_itself(api: ApiServer, emulator: Any) -> None:
    directory = demo_directory()
    contoso = directory["tenants"][0]
    contoso["apps"][0]["roles"] = ["Mail.Send", "Application.Read.All"]
    contoso["apps"][0]["secrets"][0]["expires_at"] = "2027-03-04T05:06:07Z"
    emulator.set_directory(directory)
    body = api.client("acme").put("/v1/email-provider", json=form(secret_expires_at="")).json()
    assert body["client_secret"]["expires_at"] == "2027-03-04T05:06:07+00:00"
    assert body["client_secret"]["expiry_source"] == "graph"
    assert [e["status"] for e in emulator.requests_log(route="applications")] == [200]


def test_expiry_stays_unknown_without_application_read_all(api: ApiServer) -> None:
    admin = api.client("acme")
    body = admin.put("/v1/email-provider", json=form(secret_expires_at="")).json()
    assert body["client_secret"]["expires_at"] is None and body["client_secret"]["expiry_source"] is None
    row = current_config(api.engine, "acme")
    assert row is not None and row.secret_expires_at is None


def test_the_emulator_lists_an_apps_credentials_without_their_values(emulator: Any) -> None:
    directory = copy.deepcopy(demo_directory())
    directory["tenants"][0]["apps"][0]["roles"].append("Application.Read.All")
    emulator.set_directory(directory)
    url = f"{emulator.graph_base_url}/applications(appId='{DEMO_CLIENT_ID}')"
    with requests.Session() as http:
        http.trust_env = False
        http.verify = str(emulator.ca_path)
        token = emulator.mint_token(tid=DEMO_TENANT_ID, appid=DEMO_CLIENT_ID, roles=["Application.Read.All"])
        listed = http.get(url, params={"$select": "passwordCredentials"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert listed.status_code == 200, listed.text
        assert [c["hint"] for c in listed.json()["passwordCredentials"]] == ["dem", "dem"]
        assert DEMO_CLIENT_SECRET not in listed.text and "keyCredentials" not in listed.json()
        denied = http.get(url, headers={"Authorization": "Bearer " + emulator.mint_token(
            tid=DEMO_TENANT_ID, appid=DEMO_CLIENT_ID, roles=["Mail.Send"])}, timeout=30)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "Authorization_RequestDenied"


def _page(api: ApiServer) -> requests.Session:
    session = PageSession()
    session.trust_env = False
    assert session.post(api.base_url + "/ui/login", data={"key": api.key("acme", "admin")}, timeout=30).ok
    return session


def test_the_page_tells_a_second_admin_instead_of_overwriting(api: ApiServer) -> None:
    # Given two admins who opened the edit form on version 1
    api.client("acme").put("/v1/email-provider", json=form())
    first, second = _page(api), _page(api)
    opened = second.get(api.base_url + "/ui/email-provider?edit=1", timeout=30).text
    assert "name='version' value='1'" in opened
    fields = {**form(client_secret=""), "version": "1"}
    # When the first saves, then the second
    assert "id='saved'" in first.post(api.base_url + "/ui/email-provider", data={**fields, "sender_name": "One"},
                                      timeout=30).text
    refused = second.post(api.base_url + "/ui/email-provider", data={**fields, "sender_name": "Two"}, timeout=30)
    # Then the second is told, and version 2 (the first's) stays in force
    assert "version 2 is in force now" in refused.text and "name='version' value='2'" in refused.text
    assert api.client("acme").get("/v1/email-provider").json()["sender_name"] == "One"


def test_the_page_shows_the_history_and_restores_a_version(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form(sender_name="First"))
    admin.put("/v1/email-provider", json=form(sender_name="Second"))
    page = _page(api)
    shown = page.get(api.base_url + "/ui/email-provider", timeout=30).text
    assert "id='history'" in shown and "id='restore-1'" in shown and "sender_name" in shown
    restored = page.post(api.base_url + "/ui/email-provider/restore", data={"version": "1", "expected": "2"},
                         timeout=30).text
    assert "id='restored'" in restored and "restored of version 1" in restored
    assert admin.get("/v1/email-provider").json()["sender_name"] == "First"
    stale = page.post(api.base_url + "/ui/email-provider/restore", data={"version": "2", "expected": "2"},
                      timeout=30).text
    assert "id='restore-error'" in stale and "version 3 is in force now" in stale


def test_the_page_says_expiry_unknown_until_a_date_is_given(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form(secret_expires_at=""))
    page = _page(api)
    assert "Expiry unknown: no reminders" in page.get(api.base_url + "/ui/email-provider", timeout=30).text
    dated = page.post(api.base_url + "/ui/email-provider",
                      data={**form(client_secret="", secret_expires_at="2027-01-31"), "version": "1"}, timeout=30)
    assert "id='saved'" in dated.text and "Expiry unknown" not in dated.text
    assert admin.get("/v1/email-provider").json()["client_secret"]["expiry_source"] == "entered"
