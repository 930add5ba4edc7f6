"""API keys from the command line, the hashed store, and credential-expiry status."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from api.keys import authenticate, revoke_key
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
    assert stack.wait_terminal([nid]) == {nid: "failed"}
    assert admin.get("/v1/email-provider").json()["status"] == "credentials_expired"
    failed = admin.get("/v1/activity", params={"error_code": "AADSTS7000222"}).json()["items"]
    assert [i["id"] for i in failed] == [nid] and "expired" in failed[0]["diagnosis"]["cause"]
