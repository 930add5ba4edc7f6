"""Webhooks end to end: the outbox, signed delivery to a real receiver, outage and recovery, rotation,
safety (addresses, redirects), the retry window that disables an endpoint, replay, and secrets kept secret."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from sqlalchemy import func, select, text
from standardwebhooks import Webhook

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.db import make_engine
from shared.models import ActivityEvent, Notification, WebhookAttempt, WebhookDelivery, WebhookEvent
from shared.producer import PLATFORM_TENANT_KEY
from shared.secretbox import SecretBox
from shared.settings import Settings
from shared.webhooks import Event, emit
from tests.api_harness import ApiServer, assert_secret_nowhere
from tests.stack import Stack, wait_until
from tests.webhook_receiver import Receiver
from worker.webhook_delivery import WebhookDeliverer

_D = WebhookDelivery.__table__  # type: ignore[attr-defined]
_E = WebhookEvent.__table__  # type: ignore[attr-defined]
_AT = WebhookAttempt.__table__  # type: ignore[attr-defined]
FAST = {"TENANTMAIL_WEBHOOK_ALLOW_HTTP": "true", "TENANTMAIL_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "TENANTMAIL_WEBHOOK_BACKOFF_BASE_MS": "20", "TENANTMAIL_WEBHOOK_BACKOFF_CAP_MS": "300",
        "TENANTMAIL_WEBHOOK_POLL_INTERVAL_MS": "20", "TENANTMAIL_WEBHOOK_LEASE_MS": "5000",
        "TENANTMAIL_WEBHOOK_TIMEOUT_S": "3"}
PROVIDER = {"provider": "customer", "service": "microsoft_graph", "sender_address": DEMO_SENDER,
            "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
            "admin_contact_email": "it-admin@acme.example"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _fast(settings: Settings, **overrides: Any) -> Settings:
    values = {k.removeprefix("TENANTMAIL_").lower(): v for k, v in FAST.items()}
    return Settings(**{**settings.model_dump(), **values, **overrides})


@pytest.fixture
def run_deliverer() -> Iterator[Callable[[ApiServer], WebhookDeliverer]]:
    """Factory: a delivery loop on a thread of this process (as a worker runs it), stopped afterwards."""
    started: list[tuple[WebhookDeliverer, threading.Thread]] = []

    def factory(api: ApiServer) -> WebhookDeliverer:
        deliverer = WebhookDeliverer(make_engine(api.settings), SecretBox.from_settings(api.settings), api.settings,
                                     name=f"test/{len(started)}")
        started.append((deliverer, deliverer.start()))
        return deliverer

    yield factory
    for deliverer, thread in started:
        deliverer.stop_event.set()
        thread.join(30)


def _deliveries(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(_D).order_by(_D.c.id)).mappings()]


def _emit(api: ApiServer, tenant: str = "acme", n: int = 1) -> list[str]:
    with api.engine.begin() as conn:
        return emit(conn, [Event(tenant, "provider.saved", {"version": i}) for i in range(n)])


def test_outage_of_minutes_then_every_event_arrives_once_per_id(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], receiver: Receiver
) -> None:
    # Given an endpoint on a receiver that is down, and two workers
    stack = make_stack(**FAST, TENANTMAIL_WEBHOOK_RETRY_FOR_S="600")
    api = make_api(stack.settings)
    admin = api.client("acme")
    created = admin.post("/v1/webhooks", json={"url": receiver.url()}).json()
    receiver.secret = created["secret"]
    receiver.down()
    stack.start_workers(2, concurrency=4)
    # When a provider save and 30 notifications happen during the outage
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    ids = admin.post("/v1/notifications:batch", json={"items": [
        {"to": [f"user{i}@example.org"], "subject": f"s{i}", "body": "b"} for i in range(30)]}).json()["ids"]
    assert set(stack.wait_terminal(ids, timeout_s=90).values()) == {"sent"}
    with stack.engine.connect() as conn:
        events = set(conn.scalars(select(_E.c.id).where(_E.c.tenant_id == "acme")))
    assert len(events) == 31
    # and every delivery has failed at least three times (the outage, compressed)
    wait_until(lambda: min(d["attempts"] for d in _deliveries(stack.engine)) >= 3, timeout_s=60,
               what="three failed attempts of every delivery")
    receiver.up()
    # Then every event arrives, signed, and the receiver sees each id once after dedupe
    wait_until(lambda: all(d["state"] == "delivered" for d in _deliveries(stack.engine)), timeout_s=90,
               what="every delivery delivered")
    with stack.engine.connect() as conn:
        attempts = conn.scalar(select(func.count()).select_from(_AT)) or 0
        failed = conn.scalar(select(func.count()).select_from(_AT).where(_AT.c.status_code.is_(None))) or 0
    print(f"webhook outage: events={len(events)} raw_deliveries={len(receiver.raw)} "
          f"unique_ids={len(receiver.unique)} attempts={attempts} failed_attempts(retries)={failed} "
          f"rejected_signatures={receiver.rejected}")
    assert set(receiver.unique) == events
    assert len(receiver.raw) >= len(events) and receiver.rejected == 0
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values()), "an id arrived with two different bodies"
    types = sorted(p["type"] for p in receiver.unique.values())
    assert types == ["notification.sent"] * 30 + ["provider.saved"]
    assert {p["data"]["id"] for p in receiver.unique.values() if p["type"] == "notification.sent"} == set(ids)
    assert failed >= 3 * len(events)


def test_rotation_signs_with_both_secrets_for_the_grace_period(
    make_api: Callable[[Settings], ApiServer], api_settings: Settings, receiver: Receiver,
    run_deliverer: Callable[[ApiServer], WebhookDeliverer],
) -> None:
    api = make_api(_fast(api_settings))
    admin = api.client("acme")
    with structlog.testing.capture_logs() as logs:
        created = admin.post("/v1/webhooks", json={"url": receiver.url(), "event_types": ["provider.saved"]}).json()
        old = created["secret"]
        rotated = admin.post(f"/v1/webhooks/{created['id']}/secret:rotate").json()
        new = rotated["secret"]
        assert new != old and new.startswith("whsec_") and rotated["previous_secret_valid_until"]
        api.responses.clear()  # the two answers above are the only ones that may carry a secret
        receiver.secret = new
        [event_id] = _emit(api)
        run_deliverer(api)
        wait_until(lambda: receiver.raw, what="a delivery")
        admin.get("/v1/webhooks")
        admin.get(f"/v1/webhooks/{created['id']}")
        admin.get(f"/v1/webhooks/{created['id']}/deliveries")
    request = receiver.requests[0]
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # a receiver still on the old secret verifies too
        assert Webhook(secret).verify(request["body"], request["headers"])["type"] == "provider.saved"
    assert request["headers"]["webhook-id"] == event_id
    for secret in (old, new):  # never again in an answer, a column, a log line or Redis
        assert_secret_nowhere(api, secret, logs, tables=("webhook_endpoint", "webhook_event", "webhook_delivery",
                                                         "webhook_attempt"))


def test_delivery_refuses_a_name_that_resolves_to_loopback(
    make_api: Callable[[Settings], ApiServer], api_settings: Settings, receiver: Receiver,
    run_deliverer: Callable[[ApiServer], WebhookDeliverer],
) -> None:
    api = make_api(_fast(api_settings, webhook_allow_private_addresses=False))
    admin = api.client("acme")
    refused = admin.post("/v1/webhooks", json={"url": receiver.url()})  # 127.0.0.1 written out: refused at save
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "url"
    plain = make_api(_fast(api_settings, webhook_allow_http=False)).client("acme").post(
        "/v1/webhooks", json={"url": "http://hooks.example.org/x"})
    assert plain.status_code == 422 and "https" in plain.json()["error"]["message"]
    # a name is checked where it matters: at delivery, against the address it resolves to
    created = admin.post("/v1/webhooks", json={"url": receiver.url(host="localhost")}).json()
    receiver.secret = created["secret"]
    _emit(api)
    run_deliverer(api)
    wait_until(lambda: _deliveries(api.engine)[0]["attempts"] >= 2, what="two attempts")
    assert "may not reach" in (_deliveries(api.engine)[0]["last_error"] or "")
    assert receiver.requests == []


def test_redirects_are_not_followed(
    make_api: Callable[[Settings], ApiServer], api_settings: Settings, receiver: Receiver,
    run_deliverer: Callable[[ApiServer], WebhookDeliverer],
) -> None:
    api = make_api(_fast(api_settings))
    created = api.client("acme").post("/v1/webhooks", json={"url": receiver.url("/redirect")}).json()
    receiver.secret = created["secret"]
    _emit(api)
    run_deliverer(api)
    wait_until(lambda: _deliveries(api.engine)[0]["attempts"] >= 2, what="two attempts")
    assert _deliveries(api.engine)[0]["last_status"] == 307
    assert {r["path"] for r in receiver.requests} == {"/redirect"} and receiver.raw == []


def test_retry_window_spent_disables_the_endpoint_emails_the_admin_and_replay_redelivers(
    make_api: Callable[[Settings], ApiServer], api_settings: Settings, receiver: Receiver,
    run_deliverer: Callable[[ApiServer], WebhookDeliverer],
) -> None:
    # Given an endpoint whose receiver stays down past a (compressed) retry window
    api = make_api(_fast(api_settings, webhook_retry_for_s=0.3))
    admin = api.client("acme")
    created = admin.post("/v1/webhooks", json={"url": receiver.url()}).json()
    receiver.secret = created["secret"]
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200  # admin contact + provider.saved
    receiver.down()
    run_deliverer(api)
    # Then the endpoint is disabled, with an event and an email to the admin contact
    endpoint = wait_until(lambda: (e := admin.get(f"/v1/webhooks/{created['id']}").json())["enabled"] is False
                          and e, what="the endpoint disabled")
    assert "failed for" in endpoint["disabled_reason"]
    events = admin.get("/v1/events").json()["items"]
    assert any(e["kind"] == "webhook_endpoint_disabled" and "it-admin@acme.example" in e["detail"] for e in events)
    n = Notification.__table__  # type: ignore[attr-defined]
    with api.engine.connect() as conn:
        mails = conn.execute(select(n.c.payload).where(n.c.tenant_id == PLATFORM_TENANT_KEY)).scalars().all()
    assert any("disabled" in m["subject"] and created["id"] in m["body"] for m in mails)
    [delivery] = admin.get(f"/v1/webhooks/{created['id']}/deliveries").json()["items"]
    assert delivery["state"] == "failed" and delivery["attempts"] >= 1
    replay = f"/v1/webhooks/{created['id']}/deliveries/{delivery['id']}:replay"
    # When replayed while disabled: refused; enabled again and the receiver back: delivered, same id
    assert admin.post(replay).status_code == 409
    assert admin.call("PATCH", f"/v1/webhooks/{created['id']}", json={"enabled": True}).json()["enabled"]
    receiver.up()
    assert admin.post(replay).status_code == 202
    detail_path = f"/v1/webhooks/{created['id']}/deliveries/{delivery['id']}"
    detail = wait_until(lambda: (d := admin.get(detail_path).json())["state"] == "delivered" and d,
                        what="the replayed delivery recorded")
    assert receiver.raw == [delivery["event_id"]] and detail["attempt_log"][-1]["status_code"] == 204
    with api.engine.connect() as conn:
        kinds = conn.execute(select(ActivityEvent.__table__.c.kind)).scalars().all()  # type: ignore[attr-defined]
    assert kinds.count("webhook_endpoint_disabled") == 1


def test_events_are_written_only_with_what_caused_them(api: ApiServer) -> None:
    # An endpoint listening for provider.saved only: a save emits one event, in its own transaction.
    admin = api.client("acme")
    admin.post("/v1/webhooks", json={"url": "https://hooks.example.org/acme", "event_types": ["provider.saved"]})
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    bad = admin.put("/v1/email-provider", json={**PROVIDER, "client_secret": "wrong-secret-value"})
    assert bad.status_code == 422  # refused by Entra ID: nothing saved, so no event
    with api.engine.connect() as conn:
        rows = conn.execute(text("SELECT type FROM webhook_event")).scalars().all()
    assert rows == ["provider.saved"]
    with pytest.raises(ValueError, match="unknown webhook event types"):
        _emit_unknown(api)


def _emit_unknown(api: ApiServer) -> None:
    with api.engine.begin() as conn:
        emit(conn, [Event("acme", "notification.exploded")])


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://hooks.example.org/x"}, "url"), ({"url": "https://10.0.0.7/x"}, "url"),
    ({"url": "https://[::1]/x"}, "url"), ({"url": "https://169.254.169.254/latest"}, "url"),
    ({"url": "https://user:pw@hooks.example.org/x"}, "url"), ({"url": "https://hooks.example.org/\r\nx"}, "url"),
    ({"url": "https://hooks.example.org/x", "event_types": ["mail.opened"]}, "event_types[0]"),
    ({"url": "https://hooks.example.org/x", "event_types": []}, "event_types"),
    ({"url": "https://hooks.example.org/x", "enabled": "yes"}, "enabled"),
    ({"url": "https://hooks.example.org/x", "colour": "red"}, "colour"),
])
def test_bad_endpoint_input_is_422_naming_the_field(api: ApiServer, body: dict[str, Any], field: str) -> None:
    answer = api.client("acme").post("/v1/webhooks", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
