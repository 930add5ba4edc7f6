"""Abuse: per-tenant rate limits on Send test and the producer endpoints, and tenant input never
choosing where the service connects (clouds are names from a fixed table; URLs only from server settings).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.clouds import CLOUDS, resolve_cloud
from shared.models import Notification, ProviderConfig
from shared.settings import Settings
from tests.api_harness import ApiServer

MESSAGE = {"to": ["ana@example.org"], "subject": "Review due", "body": "Hi"}
PROVIDER = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET, "cloud": "global"}
LIMIT = 10


def _count(api: ApiServer, table: Any, tenant: str) -> int:
    with api.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(table.c.tenant_id == tenant)) or 0)


def _notifications(api: ApiServer, tenant: str) -> int:
    return _count(api, Notification.__table__, tenant)  # type: ignore[attr-defined]


@pytest.fixture
def limited(make_api: Callable[[Settings], ApiServer], api_settings: Settings) -> ApiServer:
    """An API admitting LIMIT notifications per tenant per minute."""
    return make_api(api_settings.model_copy(update={"api_notifications_per_minute": LIMIT}))


def test_producer_endpoints_share_one_limit_per_tenant_and_answer_429_with_retry_after(limited: ApiServer) -> None:
    acme = limited.client("acme", "sender")
    # Given 4 single notifications and a batch of 5 (9 of 10)
    for i in range(4):
        assert acme.post("/v1/notifications", json={**MESSAGE, "subject": f"n{i}"}).status_code == 201
    assert acme.post("/v1/notifications:batch", json={"items": [MESSAGE] * 5}).status_code == 201
    # When a batch of 2 would pass the limit, it is refused whole and nothing of it is stored
    refused = acme.post("/v1/notifications:batch", json={"items": [MESSAGE] * 2})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _notifications(limited, "acme") == 9
    # Then one more still fits, and the one after is refused on the single endpoint too
    assert acme.post("/v1/notifications", json=MESSAGE).status_code == 201
    single = acme.post("/v1/notifications", json=MESSAGE)
    assert single.status_code == 429 and int(single.headers["Retry-After"]) >= 1
    assert _notifications(limited, "acme") == 10
    # And another tenant, and another key of the same tenant, are counted apart / together
    assert limited.client("globex", "sender").post("/v1/notifications", json=MESSAGE).status_code == 201
    assert limited.client("acme", "admin").post("/v1/notifications", json=MESSAGE).status_code == 429


def test_invalid_notifications_do_not_use_the_limit(limited: ApiServer) -> None:
    acme = limited.client("acme", "sender")
    for _ in range(3 * LIMIT):
        assert acme.post("/v1/notifications", json={**MESSAGE, "to": ["not-an-address"]}).status_code == 422
    assert acme.post("/v1/notifications:batch", json={"items": [MESSAGE] * LIMIT}).status_code == 201


def test_send_test_limit_is_per_tenant(api: ApiServer) -> None:
    acme = api.client("acme")
    for _ in range(api.settings.api_test_sends_per_minute):
        assert acme.post("/v1/email-provider/test", json={"to": "ana@example.org"}).status_code == 200
    refused = acme.post("/v1/email-provider/test", json={"to": "ana@example.org"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "try again in" in refused.json()["error"]["message"]
    assert api.client("globex").post("/v1/email-provider/test", json={"to": "ana@example.org"}).status_code == 200


@pytest.fixture
def listener() -> Iterator[tuple[str, list[Any]]]:
    """A TCP listener that records every connection: where a tenant would like us to connect."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(5)
    server.close()


@pytest.mark.parametrize("change", [
    {"cloud": "{url}"}, {"cloud": "{url}/common"}, {"azure_tenant": "{url}"}, {"authority": "{url}"},
    {"authority_host": "{url}"}, {"graph_base_url": "{url}"}, {"graph_base": "{url}"}, {"base_url": "{url}"},
    {"sender_address": "x@127.0.0.1"},
], ids=lambda c: next(iter(c)))
def test_tenant_input_cannot_choose_where_we_connect(api: ApiServer, emulator: Any,
                                                      listener: tuple[str, list[Any]], change: dict[str, str]) -> None:
    url, accepted = listener
    admin = api.client("acme")
    # Given a saved configuration
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    token_requests = len(emulator.requests_log())
    # When a save names a URL anywhere
    body = {**PROVIDER, **{k: v.format(url=url) for k, v in change.items()}}
    response = admin.put("/v1/email-provider", json=body)
    # Then it is refused naming the field, before any connection, and nothing is stored
    assert response.status_code == 422 and response.json()["error"]["field"] == next(iter(change))
    assert accepted == [] and len(emulator.requests_log()) == token_requests
    assert _count(api, ProviderConfig.__table__, "acme") == 1  # type: ignore[attr-defined]
    assert admin.get("/v1/email-provider").json()["cloud"] == "global"


def test_every_cloud_name_maps_to_a_fixed_microsoft_host_and_only_settings_override_it(emulator: Any) -> None:
    hosts = {"login.microsoftonline.com", "login.microsoftonline.us", "login.partner.microsoftonline.cn"}
    graphs = {"graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"}
    for name in CLOUDS:
        cloud = resolve_cloud(name, Settings())
        assert cloud.authority_host.removeprefix("https://") in hosts
        assert cloud.graph_base.removeprefix("https://").split("/")[0] in graphs
        overridden = resolve_cloud(name, Settings(authority_override=emulator.base_url,
                                                  graph_base_override=emulator.graph_base_url))
        assert overridden.authority_host == emulator.base_url.rstrip("/")


def test_a_sovereign_cloud_save_still_connects_only_where_server_settings_say(api: ApiServer, emulator: Any) -> None:
    # The tenant picks a cloud by name; the server's override (the emulator here) is where the check goes.
    before = len(emulator.requests_log(route="token"))
    saved = api.client("acme").put("/v1/email-provider", json={**PROVIDER, "cloud": "usgov_high"})
    assert saved.status_code == 200 and saved.json()["cloud"] == "usgov_high"
    assert len(emulator.requests_log(route="token")) == before + 1
