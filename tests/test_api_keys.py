"""API keys from the command line, the hashed store, and credential-expiry status."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from api.keys import authenticate, create_key, revoke_key
from emulator.demo import DEMO_CLIENT_ID, DEMO_EXPIRED_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import ROOT, Stack


def test_keys_create_prints_a_key_that_is_stored_only_as_its_digest(api: ApiServer) -> None:
    env = {"DATABASE_URL": api.settings.database_url or "", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "TENANTMAIL_LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-m", "tenantmail", "keys", "create", "--tenant", "acme", "--role", "viewer"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    key = out.stdout.strip().splitlines()[-1]
    who = authenticate(api.engine, key)
    assert who is not None and (who.tenant_id, who.role) == ("acme", "viewer")
    with api.engine.connect() as conn:
        assert all(key not in str(v) for row in conn.execute(text("SELECT * FROM api_key")) for v in row)
    assert api.anonymous(key).get("/v1/email-provider").status_code == 200
    assert revoke_key(api.engine, who.key_id)
    assert api.anonymous(key).get("/v1/email-provider").status_code == 401


def test_unknown_routes_and_methods_answer_json(api: ApiServer) -> None:
    admin = api.client("acme")
    missing = admin.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = admin.call("PATCH", "/v1/email-provider")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_a_recorded_expiry_in_the_past_shows_credentials_expired(api: ApiServer) -> None:
    admin = api.client("acme")
    body = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
            "client_secret": "demo-secret-value-contoso", "secret_expires_at": "2020-01-01"}
    assert admin.put("/v1/email-provider", json=body).json()["status"] == "credentials_expired"


def test_aadsts7000222_at_send_time_marks_the_provider_expired(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    stack = make_stack()
    api = make_api(stack.settings)
    # Stored while it was still valid (the API itself would refuse an expired secret on save).
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_EXPIRED_SECRET)
    admin = api.client("acme")
    assert admin.get("/v1/email-provider").json()["status"] == "active"
    nid = admin.post("/v1/notifications", json={"to": ["ana@example.org"], "subject": "s", "body": "b"}).json()["id"]
    stack.start_workers(1, concurrency=2)
    assert stack.wait_terminal([nid], settled=("sent", "failed", "ambiguous", "held")) == {nid: "held"}
    assert admin.get("/v1/email-provider").json()["status"] == "credentials_expired"
    held = admin.get("/v1/activity", params={"error_code": "AADSTS7000222"}).json()["items"]
    assert [i["id"] for i in held] == [nid] and "expired" in held[0]["diagnosis"]["cause"]


def test_a_service_key_from_the_cli_enqueues_and_reads_for_its_tenants_only(api: ApiServer) -> None:
    env = {"DATABASE_URL": api.settings.database_url or "", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "TENANTMAIL_LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-m", "tenantmail", "keys", "create", "--role", "service", "--tenants",
                          "acme,initech"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    key = out.stdout.strip().splitlines()[-1]
    service = api.anonymous(key)
    message = {"to": ["ana@example.org"], "subject": "s", "body": "b"}
    nid = service.post("/v1/notifications", json=message, headers={"X-Tenant-Id": "acme"}).json()["id"]
    assert service.get(f"/v1/notifications/{nid}", headers={"X-Tenant-Id": "acme"}).status_code == 200
    assert service.get(f"/v1/notifications/{nid}", headers={"X-Tenant-Id": "initech"}).status_code == 404
    assert service.post("/v1/notifications", json=message, headers={"X-Tenant-Id": "globex"}).status_code == 403
    missing = service.post("/v1/notifications", json=message)
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "X-Tenant-Id"
    assert service.put("/v1/email-provider", json={"provider": "platform"},
                       headers={"X-Tenant-Id": "acme"}).status_code == 403
    # a tenant key may not name another tenant either
    viewer = api.client("acme", "viewer")
    assert viewer.get("/v1/activity", headers={"X-Tenant-Id": "globex"}).status_code == 403
    with api.engine.connect() as conn:
        assert conn.execute(text("SELECT tenant_id FROM notification")).scalars().all() == ["acme"]


def test_service_key_counts_against_the_named_tenants_rate_limit(
    make_api: Callable[[Settings], ApiServer], api_settings: Settings
) -> None:
    api = make_api(Settings(**{**api_settings.model_dump(), "api_notifications_per_minute": 1}))
    service = api.anonymous(create_key(api.engine, "", "service", tenants=None))
    message = {"to": ["ana@example.org"], "subject": "s", "body": "b"}
    assert service.post("/v1/notifications", json=message, headers={"X-Tenant-Id": "acme"}).status_code == 201
    assert service.post("/v1/notifications", json=message, headers={"X-Tenant-Id": "acme"}).status_code == 429
    assert service.post("/v1/notifications", json=message, headers={"X-Tenant-Id": "globex"}).status_code == 201


def test_tenant_admins_create_list_expire_and_revoke_keys(api: ApiServer) -> None:
    admin = api.client("acme")
    created = admin.post("/v1/keys", json={"role": "sender", "label": "billing service"})
    assert created.status_code == 201
    key = created.json()["key"]
    assert api.anonymous(key).post("/v1/notifications", json={"to": ["a@example.org"], "subject": "s",
                                                             "body": "b"}).status_code == 201
    listed = admin.get("/v1/keys")
    assert key not in listed.text and key.split("_", 2)[2] not in listed.text
    mine = next(k for k in listed.json()["items"] if k["id"] == created.json()["id"])
    assert mine["role"] == "sender" and mine["label"] == "billing service" and mine["last_used_at"]
    for body, field in (({"role": "service"}, "role"), ({"role": "viewer", "expires_at": "2001-01-01"}, "expires_at"),
                        ({"role": "viewer", "expires_at": "soon"}, "expires_at")):
        refused = admin.post("/v1/keys", json=body)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field
    expiry = admin.call("PATCH", f"/v1/keys/{mine['id']}", json={"expires_at": "2099-01-01T00:00:00Z"})
    assert expiry.json()["expires_at"].startswith("2099-01-01")
    assert admin.delete(f"/v1/keys/{mine['id']}").status_code == 204
    assert api.anonymous(key).get("/v1/activity").status_code == 401
    assert admin.delete(f"/v1/keys/{mine['id']}").status_code == 404
    assert api.client("globex").delete(f"/v1/keys/{admin.session.headers['Authorization'].split('_')[1]}"
                                       ).status_code == 404
    with api.engine.connect() as conn:
        assert all(key not in str(v) for row in conn.execute(text("SELECT * FROM api_key")) for v in row)
