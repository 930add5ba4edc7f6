"""Inspection and control: request log masking, counters, reset, seeded ids, directory, CLI process."""

from __future__ import annotations

import json

import requests
import yaml

from emulator.directory import DEMO_CLIENT_SECRET, DEMO_SENDER, demo_directory, make_tenant
from emulator.testing import EmulatorProcess, running_emulator

from .conftest import GRAPH_SCOPE, send


def test_request_log_masks_secret_and_bearer_token(emulator, http, make_app, demo_token):
    send(http, emulator, DEMO_SENDER, demo_token)
    dumped = json.dumps(emulator.requests_log())
    assert DEMO_CLIENT_SECRET not in dumped
    assert demo_token not in dumped
    [token_entry] = emulator.requests_log(route="token")
    assert token_entry["form"]["client_secret"] == "***"
    assert emulator.requests_log(route="sendMail")[0]["headers"]["Authorization"] == "Bearer ***"


def test_reset_clears_outbox_log_counters_keeps_directory(emulator, http, demo_token):
    send(http, emulator, DEMO_SENDER, demo_token)
    emulator.reset()
    assert emulator.outbox() == []
    assert emulator.requests_log() == []
    assert emulator.counters()["send_requests"] == 0
    assert send(http, emulator, DEMO_SENDER, demo_token).status_code == 202


def test_seeded_emulators_issue_the_same_request_ids():
    ids = []
    for _ in range(2):
        with running_emulator(directory=demo_directory(), seed=42) as handle:
            token = handle.mint_token(
                tid=demo_directory()["tenants"][1]["id"],
                appid=demo_directory()["tenants"][1]["apps"][0]["client_id"],
                roles=["Mail.Send"],
            )
            session = requests.Session()
            session.trust_env = False
            session.verify = handle.ca_path
            ids.append(send(session, handle, "notifications@platform.example", token).headers["request-id"])
            session.close()
    assert ids[0] == ids[1]


def test_many_tenants_from_make_tenant_are_distinct(emulator, make_app):
    for index in range(200):
        emulator.add_tenant(make_tenant(index))
    tenants = emulator.get_directory()["tenants"]
    assert len({t["id"] for t in tenants}) == 202
    tenant = make_tenant(199)
    app = make_app(tenant["id"], tenant["apps"][0]["client_id"], "secret-199")
    assert "access_token" in app.acquire_token_for_client(scopes=GRAPH_SCOPE)


def test_cli_subprocess_plain_http_with_yaml_directory(tmp_path):
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump({"tenants": [make_tenant(1)]}))
    with EmulatorProcess(tls=False, extra_args=["--directory", str(path), "--seed", "1"]) as handle:
        assert handle.ca_path is None
        assert handle.base_url.startswith("http://127.0.0.1:")
        assert handle.get_directory()["tenants"][0]["id"] == make_tenant(1)["id"]
