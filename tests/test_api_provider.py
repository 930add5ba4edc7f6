"""Email provider settings through the real API, emulator, Redis and both databases."""

from __future__ import annotations

from typing import Any

import structlog

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import current_config
from tests.api_harness import ApiServer, assert_secret_nowhere


def form(**overrides: Any) -> dict[str, Any]:
    """A valid customer-provided Graph form for the demo tenant."""
    base = {"provider": "customer", "service": "microsoft_graph", "sender_name": "Governance Team",
            "sender_address": DEMO_SENDER, "reply_to": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID,
            "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "secret_expires_at": "2027-06-30",
            "cloud": "global"}
    base.update(overrides)
    return base


def test_save_valid_credentials_stores_a_version_and_hides_the_secret(api: ApiServer) -> None:
    admin = api.client("acme")
    response = admin.put("/v1/email-provider", json=form())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == "customer" and body["version"] == 1
    assert body["client_secret"]["last4"] == DEMO_CLIENT_SECRET[-4:]
    assert body["client_secret"]["expires_at"] == "2027-06-30T00:00:00+00:00"
    assert body["client_secret"]["expires_in_days"] > 30
    assert DEMO_CLIENT_SECRET not in response.text
    history = admin.get("/v1/email-provider/history").json()["items"]
    assert history[0]["version"] == 1 and "client_secret" in history[0]["changed_fields"]
    assert history[0]["actor"].startswith("key:")


def test_wrong_secret_answers_422_with_the_fix_and_keeps_the_previous_version(api: ApiServer) -> None:
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form()).status_code == 200
    response = admin.put("/v1/email-provider", json=form(client_secret="s1~secret-id-pasted-instead",
                                                        sender_name="Changed"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "AADSTS7000215" and error["field"] == "client_secret"
    assert "AADSTS7000215" in error["message"]
    assert "paste its Value" in error["diagnosis"]["fix"]
    current = admin.get("/v1/email-provider").json()
    assert current["version"] == 1 and current["sender_name"] == "Governance Team"
    row = current_config(api.engine, "acme")
    assert row is not None and row.version == 1 and api.box.decrypt(row.secret_enc or b"") == DEMO_CLIENT_SECRET


def test_credential_errors_name_their_cause(api: ApiServer) -> None:
    admin = api.client("acme")
    cases = {
        "AADSTS700016": form(client_id="11111111-2222-4333-8444-555555555555"),
        "AADSTS7000222": form(client_secret="demo-secret-value-expired"),
        "AADSTS90002": form(azure_tenant="nosuchtenant.example"),
    }
    for code, body in cases.items():
        response = admin.put("/v1/email-provider", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["diagnosis"]["fix"]
    assert admin.get("/v1/email-provider").json()["provider"] == "platform"


def test_fields_are_validated_before_any_credential_check(api: ApiServer) -> None:
    admin = api.client("acme")
    cases = {
        "sender_name": form(sender_name="Team\r\nBcc: victim@example.org"),
        "sender_address": form(sender_address="not-an-address"),
        "cloud": form(cloud="https://evil.example"),
        "client_id": form(client_id="abc"),
        "azure_tenant": form(azure_tenant="contoso example"),
        "client_secret": form(client_secret="abc\ndef-ghi-jkl"),
        "secret_expires_at": form(secret_expires_at="next year"),
    }
    for field, body in cases.items():
        response = admin.put("/v1/email-provider", json=body)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["error"]["field"] == field


def test_viewer_and_sender_cannot_save_and_another_tenant_is_untouched(api: ApiServer) -> None:
    assert api.client("acme", "viewer").put("/v1/email-provider", json=form()).status_code == 403
    assert api.client("acme", "sender").delete("/v1/email-provider").status_code == 403
    assert api.client("acme", "viewer").get("/v1/email-provider").status_code == 200
    assert api.client("globex").put("/v1/email-provider", json=form()).status_code == 200
    assert api.client("acme").get("/v1/email-provider").json()["provider"] == "platform"
    assert current_config(api.engine, "acme") is None


def test_requests_without_a_valid_key_get_401_json(api: ApiServer) -> None:
    for client in (api.anonymous(), api.anonymous("tm_000000000000_" + "x" * 43)):
        response = client.get("/v1/email-provider")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"


def test_oversized_or_broken_bodies_get_json_errors(api: ApiServer) -> None:
    admin = api.client("acme")
    big = admin.put("/v1/email-provider", data=b"{" + b" " * (api.settings.api_max_body_bytes + 10) + b"}",
                    headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    broken = admin.put("/v1/email-provider", data=b"{nope", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert "Traceback" not in big.text + broken.text


def test_delete_reverts_to_the_platform_default(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form())
    body = admin.delete("/v1/email-provider").json()
    assert body["provider"] == "platform" and body["version"] == 2
    assert admin.get("/v1/email-provider/history").json()["items"][0]["action"] == "reverted"


def test_blank_secret_keeps_the_stored_one_for_the_same_app(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form())
    response = admin.put("/v1/email-provider", json=form(client_secret="", sender_name="Renamed"))
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    changed = admin.get("/v1/email-provider/history").json()["items"][0]["changed_fields"]
    assert changed == ["sender_name"]


def test_the_secret_is_in_no_response_log_column_or_redis_key(api: ApiServer) -> None:
    admin = api.client("acme")
    with structlog.testing.capture_logs() as logs:
        assert admin.put("/v1/email-provider", json=form(client_secret="wrong-secret-value-9")).status_code == 422
        assert admin.put("/v1/email-provider", json=form()).status_code == 200
        admin.get("/v1/email-provider")
        admin.get("/v1/email-provider/history")
        assert admin.post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()["result"] == "sent"
    assert logs and any(e["event"] == "provider.saved" for e in logs)
    for secret in (DEMO_CLIENT_SECRET, "wrong-secret-value-9"):
        assert_secret_nowhere(api, secret, logs)


def test_send_test_reports_sent_with_the_request_id(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form())
    result = admin.post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()
    assert result["result"] == "sent" and result["request_id"]
    assert result["sender"] == DEMO_SENDER
    assert len(emulator.outbox(mailbox=DEMO_SENDER)) == 1


def test_send_test_outside_the_access_policy_is_diagnosed(api: ApiServer) -> None:
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form(sender_address=DEMO_CEO)).status_code == 200
    result = admin.post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()
    assert result["result"] == "failed" and result["code"] == "ErrorAccessDenied"
    assert "Application Access Policy" in result["diagnosis"]["cause"]
    assert "Test-ApplicationAccessPolicy" in result["diagnosis"]["fix"]


def test_send_test_is_rate_limited_per_tenant(api: ApiServer) -> None:
    admin = api.client("acme")
    limit = api.settings.api_test_sends_per_minute
    for _ in range(limit):
        assert admin.post("/v1/email-provider/test", json={"to": "ana@example.org"}).status_code == 200
    refused = admin.post("/v1/email-provider/test", json={"to": "ana@example.org"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert api.client("globex").post("/v1/email-provider/test", json={"to": "ana@example.org"}).status_code == 200


def test_config_changes_checks_and_test_sends_appear_as_events(api: ApiServer) -> None:
    admin = api.client("acme")
    admin.put("/v1/email-provider", json=form(client_secret="wrong-secret-value-9"))
    admin.put("/v1/email-provider", json=form(sender_address=DEMO_CEO))
    admin.post("/v1/email-provider/test", json={"to": "ana@example.org"})
    admin.delete("/v1/email-provider")
    events = api.client("acme", "viewer").get("/v1/events").json()["items"]
    assert [(e["kind"], e["code"]) for e in events] == [
        ("provider_reverted", None), ("test_failed", "ErrorAccessDenied"), ("provider_saved", None),
        ("provider_check_failed", "AADSTS7000215")]
    assert all(e["actor"].startswith("key:") for e in events)
    assert api.client("globex", "viewer").get("/v1/events").json()["items"] == []
