"""The OpenAPI document and the server-rendered admin page, over a real port."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from openapi_spec_validator import validate

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from tests.api_harness import ApiServer, PageSession


def _walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _walk_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _walk_refs(v)]
    return []


def test_openapi_document_is_public_valid_and_its_references_resolve(api: ApiServer) -> None:
    doc = api.anonymous().get("/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    for path in ("/v1/email-provider", "/v1/email-provider/test", "/v1/activity", "/v1/stats",
                 "/v1/notifications", "/v1/notifications:batch", "/v1/notifications/{id}"):
        assert path in doc["paths"]
    for ref in _walk_refs(doc):
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref
    for item in doc["paths"].values():
        for op in item.values():
            assert op["responses"] and all(code.isdigit() for code in op["responses"])


def _page_session(api: ApiServer, role: str = "admin") -> requests.Session:
    session = PageSession()
    session.trust_env = False
    key = api.key("acme", role)
    response = session.post(api.base_url + "/ui/login", data={"key": key}, timeout=30)
    assert response.status_code == 200 and "Email provider" in response.text
    return session


def test_page_requires_login(api: ApiServer) -> None:
    response = requests.get(api.base_url + "/ui/email-provider", timeout=30, allow_redirects=False)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/login"
    bad = requests.post(api.base_url + "/ui/login", data={"key": "tm_nope"}, timeout=30)
    assert "not valid" in bad.text


def test_page_save_shows_the_error_inline_and_keeps_the_values_but_not_the_secret(api: ApiServer) -> None:
    session = _page_session(api)
    fields = {"provider": "customer", "service": "microsoft_graph", "sender_name": "Governance Team",
              "sender_address": DEMO_SENDER, "reply_to": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID,
              "client_id": DEMO_CLIENT_ID, "client_secret": "the-secret-id-not-value", "secret_expires_at": "",
              "cloud": "global"}
    wrong = session.post(api.base_url + "/ui/email-provider", data=fields, timeout=30)
    assert "id='error-client_secret'" in wrong.text and "AADSTS7000215" in wrong.text
    assert "Governance Team" in wrong.text and "the-secret-id-not-value" not in wrong.text
    assert "Provider: <b>Platform default</b>" in wrong.text  # the previous configuration is still in force
    right = session.post(api.base_url + "/ui/email-provider", data={**fields, "client_secret": DEMO_CLIENT_SECRET},
                         timeout=30)
    assert "Saved" in right.text and "Customer provided" in right.text and DEMO_CLIENT_SECRET not in right.text
    sent = session.post(api.base_url + "/ui/email-provider/test", data={"to": "ana@example.org"}, timeout=30)
    assert "Sent. Graph request-id" in sent.text
    activity = session.get(api.base_url + "/ui/activity", timeout=30)
    assert activity.status_code == 200 and "<table id='notifications'>" in activity.text


def test_page_test_send_shows_the_access_policy_diagnosis(api: ApiServer) -> None:
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json={
        "sender_address": DEMO_CEO, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET}).status_code == 200
    session = _page_session(api)
    result = session.post(api.base_url + "/ui/email-provider/test", data={"to": "ana@example.org"}, timeout=30)
    assert "Failed: ErrorAccessDenied" in result.text and "Test-ApplicationAccessPolicy" in result.text


def test_page_warns_when_the_secret_expires_within_30_days(api: ApiServer) -> None:
    soon = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
    assert api.client("acme").put("/v1/email-provider", json={
        "sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET, "secret_expires_at": soon}).status_code == 200
    page = _page_session(api, "viewer").get(api.base_url + "/ui/email-provider", timeout=30)
    assert "id='expiry-warning'" in page.text and "expires in" in page.text


def test_viewer_page_has_no_edit(api: ApiServer) -> None:
    session = _page_session(api, "viewer")
    page = session.get(api.base_url + "/ui/email-provider?edit=1", timeout=30)
    assert "Edit" not in page.text and "<form method='post'" not in page.text


def test_page_sends_a_filled_certificate_and_shows_its_error_inline_without_echoing_it(api: ApiServer) -> None:
    session = _page_session(api)
    pem = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    fields = {"provider": "customer", "service": "microsoft_graph", "sender_address": DEMO_SENDER,
              "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID, "client_secret": "",
              "certificate_pem": pem, "cloud": "global"}
    page = session.post(api.base_url + "/ui/email-provider", data=fields, timeout=30)
    assert "id='error-certificate_pem'" in page.text and "not a key" not in page.text
    blank = session.post(api.base_url + "/ui/email-provider", data={**fields, "certificate_pem": "  "}, timeout=30)
    assert "id='error-client_secret'" in blank.text  # an empty certificate is not sent: the secret is missing
