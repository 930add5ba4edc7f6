"""Certificate credentials through the real API, emulator (client assertions), workers and both databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from emulator.testing import make_certificate
from shared.settings import Settings
from tests.api_harness import ApiServer, assert_secret_nowhere
from tests.stack import Stack


def form(**overrides: Any) -> dict[str, Any]:
    """A valid customer-provided Graph form for the demo tenant, without a credential."""
    base = {"provider": "customer", "service": "microsoft_graph", "sender_name": "Governance Team",
            "sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
            "cloud": "global"}
    base.update(overrides)
    return base


def registered_certificate(emulator: Any, *, valid_days: float = 200) -> tuple[str, str]:
    """A new key and certificate whose public part is uploaded to the demo app; returns (pem, SHA-1 hex)."""
    key_pem, cert_pem = make_certificate(valid_days=valid_days)
    emulator.add_certificate(DEMO_TENANT_ID, DEMO_CLIENT_ID, cert_pem)
    sha1 = x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA1()).hex().upper()
    return key_pem + cert_pem, sha1


def test_right_certificate_saves_and_sends_end_to_end(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    # given: the certificate's public part is registered on the app, as an admin uploads it
    stack = make_stack()
    api = make_api(stack.settings)
    pem, thumbprint = registered_certificate(emulator, valid_days=200)
    admin = api.client("acme")

    # when: the admin saves the key and certificate, and a notification is sent
    saved = admin.put("/v1/email-provider", json=form(certificate_pem=pem))
    nid = admin.post("/v1/notifications", json={"to": ["ana@example.org"], "subject": "s", "body": "b"}).json()["id"]
    stack.start_workers(1, concurrency=2)

    # then: the check and the worker both got tokens with a client assertion, and Graph accepted it
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["credential_type"] == "certificate" and body["client_secret"] is None
    assert body["certificate"]["thumbprint"] == thumbprint
    assert 198 <= body["certificate"]["expires_in_days"] <= 200
    assert "PRIVATE KEY" not in saved.text and "BEGIN CERTIFICATE" not in saved.text
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert [m["x_headers"]["X-Tenantmail-Notification-Id"] for m in emulator.outbox()] == [nid]
    token_forms = [e["form"] for e in emulator.requests_log(route="token", status=200)]
    assert len(token_forms) == 2  # the API's credential check, then the worker
    assert all(f["client_assertion"] == "***" and "client_secret" not in f for f in token_forms)
    history = admin.get("/v1/email-provider/history").json()["items"][0]
    assert {"certificate_pem", "cert_thumbprint"} <= set(history["changed_fields"])


def test_wrong_certificate_answers_422_with_aadsts700027_and_keeps_the_old_config(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    # given: a working configuration with a secret
    stack = make_stack()
    api = make_api(stack.settings)
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form(client_secret=DEMO_CLIENT_SECRET)).status_code == 200
    key_pem, cert_pem = make_certificate()  # never uploaded to the app registration

    # when
    response = admin.put("/v1/email-provider", json=form(certificate_pem=key_pem + cert_pem, sender_name="New"))

    # then: 422 naming the code, the field and the fix; version 1 with its secret still sends
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "AADSTS700027" and error["field"] == "certificate_pem"
    assert "AADSTS700027" in error["message"]
    assert "public part" in error["diagnosis"]["fix"] and "thumbprint" in error["diagnosis"]["fix"]
    current = admin.get("/v1/email-provider").json()
    assert current["version"] == 1 and current["credential_type"] == "secret"
    assert current["sender_name"] == "Governance Team"
    nid = admin.post("/v1/notifications", json={"to": ["ana@example.org"], "subject": "s", "body": "b"}).json()["id"]
    stack.start_workers(1, concurrency=2)
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert stack.notification(nid)["provider_version"] == 1
    events = admin.get("/v1/events").json()["items"]
    assert events[0]["kind"] == "provider_check_failed" and events[0]["code"] == "AADSTS700027"


def test_bad_certificate_input_is_refused_before_any_credential_check(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    key_pem, cert_pem = make_certificate()
    _, other_cert = make_certificate()
    old_key, old_cert = make_certificate(valid_days=-2, not_before_days=-40)
    cases = {
        "does not belong": form(certificate_pem=key_pem + other_cert),
        "expired on": form(certificate_pem=old_key + old_cert),
        "no PEM private key": form(certificate_pem="not a pem at all"),
        "not both": form(certificate_pem=key_pem + cert_pem, client_secret=DEMO_CLIENT_SECRET),
    }
    for reason, body in cases.items():
        response = admin.put("/v1/email-provider", json=body)
        assert response.status_code == 422, (reason, response.text)
        error = response.json()["error"]
        assert error["field"] == "certificate_pem" and reason in error["message"], (reason, error)
    assert emulator.requests_log(route="token") == []
    assert admin.get("/v1/email-provider").json()["provider"] == "platform"


def test_blank_credential_keeps_the_stored_certificate(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    pem, thumbprint = registered_certificate(emulator)
    assert admin.put("/v1/email-provider", json=form(certificate_pem=pem)).status_code == 200

    response = admin.put("/v1/email-provider", json=form(sender_name="Renamed", admin_contact_email="it@acme.example"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 2 and body["certificate"]["thumbprint"] == thumbprint
    assert body["admin_contact_email"] == "it@acme.example"
    changed = admin.get("/v1/email-provider/history").json()["items"][0]["changed_fields"]
    assert sorted(changed) == ["admin_contact_email", "sender_name"]


def test_the_private_key_is_in_no_response_log_column_or_redis_key(api: ApiServer, emulator: Any) -> None:
    admin = api.client("acme")
    pem, _ = registered_certificate(emulator)
    key_body = pem.split("-----")[2].strip().splitlines()[1]  # a line of the key's base64
    with structlog.testing.capture_logs() as logs:
        assert admin.put("/v1/email-provider", json=form(certificate_pem=pem)).status_code == 200
        admin.get("/v1/email-provider")
        admin.get("/v1/email-provider/history")
        assert admin.post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()["result"] == "sent"
    assert any(e["event"] == "provider.saved" and e["credential_type"] == "certificate" for e in logs)
    assert_secret_nowhere(api, key_body, logs)
