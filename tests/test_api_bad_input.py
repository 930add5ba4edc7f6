"""Bad input on every write endpoint: a 4xx naming the problem or the field, and nothing stored or sent.

The write endpoints come from the app's router, so a new one fails the coverage test until it has
cases here. After each bad request the whole database (every table, every row) and the emulator's
outbox are what they were before.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import inspect, text

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.settings import Settings
from tests.api_harness import ApiClient, ApiServer, app_routes

MAX_BODY_BYTES = 64 * 1024
MAX_NOTIFICATION_BYTES = 96 * 1024  # POST /v1/notifications has its own, larger limit (large attachments)
PROVIDER = {"provider": "customer", "service": "microsoft_graph", "sender_name": "Governance Team",
            "sender_address": DEMO_SENDER, "reply_to": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID,
            "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "cloud": "global"}
MESSAGE = {"to": ["ana@example.org"], "subject": "Review due", "body": "<p>Hi</p>", "body_type": "html"}
# Each write endpoint with a valid body (None: it takes no body).
WRITE_ENDPOINTS: dict[str, dict[str, Any] | None] = {
    "PUT /v1/email-provider": PROVIDER,
    "DELETE /v1/email-provider": None,
    "POST /v1/email-provider/history/{version}:restore": None,
    "POST /v1/email-provider/test": {"to": "ana@example.org"},
    "POST /v1/notifications": MESSAGE,
    "POST /v1/notifications:batch": {"items": [MESSAGE]},
    "POST /v1/notifications:retry": None,
    "POST /v1/notifications/{id}:retry": None,
    "POST /v1/webhooks": {"url": "https://hooks.acme.example/h"},
    "PATCH /v1/webhooks/{id}": {"description": "d"},
    "DELETE /v1/webhooks/{id}": None,
    "POST /v1/webhooks/{id}/secret:rotate": None,
    "POST /v1/webhooks/{id}/deliveries/{delivery_id}:replay": None,
    "POST /v1/keys": {"role": "viewer"},
    "PATCH /v1/keys/{id}": {"expires_at": "2099-01-01T00:00:00Z"},
    "DELETE /v1/keys/{id}": None,
}
BODY_ENDPOINTS = [e for e, body in WRITE_ENDPOINTS.items() if body is not None]

# (endpoint, field, bad value) → 422 naming the field. Fields of a batch item are named items[i].field.
WRONG_TYPES = [
    ("PUT /v1/email-provider", "provider", True), ("PUT /v1/email-provider", "service", 5),
    ("PUT /v1/email-provider", "sender_name", 5), ("PUT /v1/email-provider", "sender_address", ["a@b.example"]),
    ("PUT /v1/email-provider", "reply_to", {"address": "a@b.example"}), ("PUT /v1/email-provider", "azure_tenant", []),
    ("PUT /v1/email-provider", "client_id", 12), ("PUT /v1/email-provider", "client_secret", 12345678),
    ("PUT /v1/email-provider", "secret_expires_at", 20270101), ("PUT /v1/email-provider", "cloud", 1),
    ("PUT /v1/email-provider", "sender_name", "Gov\r\nBcc: all@example.org"),
    ("PUT /v1/email-provider", "client_id", "not-a-guid"),
    ("PUT /v1/email-provider", "senders", ["security"]), ("PUT /v1/email-provider", "senders", "security"),
    ("POST /v1/email-provider/test", "sender", 5), ("POST /v1/email-provider/test", "sender", "Bad Name"),
    ("POST /v1/email-provider/test", "sender", "nosuchsender"),
    ("POST /v1/notifications", "sender", 5), ("POST /v1/notifications", "sender", "nosuchsender"),
    ("POST /v1/notifications:batch", "items[0].sender", "nosuchsender"),
    ("POST /v1/email-provider/test", "to", 5), ("POST /v1/email-provider/test", "to", ["ana@example.org"]),
    ("POST /v1/email-provider/test", "to", "ana@example.org\r\nBcc: all@example.org"),
    ("POST /v1/notifications", "to", "ana@example.org"), ("POST /v1/notifications", "to[0]", 5),
    ("POST /v1/notifications", "subject", 5), ("POST /v1/notifications", "body", ["x"]),
    ("POST /v1/notifications", "body_type", 5), ("POST /v1/notifications", "importance", []),
    ("POST /v1/notifications", "headers", 5), ("POST /v1/notifications", "attachments", {"a": 1}),
    ("POST /v1/notifications", "cc", {}), ("POST /v1/notifications", "reply_to", "r@example.org"),
    ("POST /v1/notifications", "idempotency_key", 5), ("POST /v1/notifications", "subject", "a\nBcc: x@example.org"),
    ("POST /v1/notifications:batch", "items", {}), ("POST /v1/notifications:batch", "items", []),
    ("POST /v1/notifications:batch", "items[0]", 5), ("POST /v1/notifications:batch", "items[0].subject", 5),
    ("POST /v1/notifications:batch", "items[0].idempotency_key", ["k"]),
    ("POST /v1/webhooks", "url", 5), ("POST /v1/webhooks", "url", "https://hooks.acme.example/\r\nBcc: x"),
    ("POST /v1/webhooks", "url", "https://127.0.0.1/h"), ("POST /v1/webhooks", "description", 5),
    ("POST /v1/webhooks", "event_types", "provider.saved"), ("POST /v1/webhooks", "enabled", "yes"),
    ("PATCH /v1/webhooks/{id}", "url", "http://hooks.acme.example/h"), ("PATCH /v1/webhooks/{id}", "event_types", []),
    ("PATCH /v1/webhooks/{id}", "description", "a\nb"),
    ("POST /v1/keys", "role", "service"), ("POST /v1/keys", "label", "a\r\nb"), ("POST /v1/keys", "expires_at", 5),
    ("PATCH /v1/keys/{id}", "expires_at", "2001-01-01T00:00:00Z"),
]


def _with(body: dict[str, Any], field: str, value: object) -> dict[str, Any]:
    """`body` with `field` (dotted, `items[0].x`, `to[0]`) set to `value`."""
    out: Any = {k: (list(v) if isinstance(v, list) else v) for k, v in body.items()}
    if field.startswith("items[0]"):
        if field == "items[0]":
            return {"items": [value]}
        return {"items": [_with(MESSAGE, field.removeprefix("items[0]."), value)]}
    if field.endswith("[0]"):
        out[field[:-3]] = [value]
        return dict(out)
    out[field] = value
    return dict(out)


@pytest.fixture
def guarded(make_api: Callable[[Settings], ApiServer], api_settings: Settings, emulator: Any) -> Iterator[Any]:
    """An admin client of a tenant with a saved provider and one notification, and `unchanged()`:
    a context manager asserting that the block changed no row of any table and sent nothing."""
    api = make_api(api_settings.model_copy(update={"api_max_body_bytes": MAX_BODY_BYTES,
                                                   "api_max_notification_bytes": MAX_NOTIFICATION_BYTES}))
    admin = api.client("acme", "admin")
    hook = admin.post("/v1/webhooks", json={"url": "https://hooks.acme.example/h"}).json()["id"]
    assert admin.put("/v1/email-provider", json=PROVIDER).status_code == 200
    assert admin.post("/v1/notifications", json=MESSAGE).status_code == 201
    [delivery] = admin.get(f"/v1/webhooks/{hook}/deliveries").json()["items"]
    spare_key = api.key("acme", "viewer")[3:15]
    admin.ids = {"keys/{id}": f"keys/{spare_key}", "{id}": hook, "{delivery_id}": delivery["id"]}  # keys first

    @contextmanager
    def unchanged(case: str) -> Iterator[None]:
        before, sent = _snapshot(api), len(emulator.outbox())
        yield
        assert _snapshot(api) == before, f"{case}: the database changed"
        assert len(emulator.outbox()) == sent, f"{case}: a message went out"

    yield admin, unchanged


def _snapshot(api: ApiServer) -> dict[str, list[tuple[Any, ...]]]:
    tables = [t for t in inspect(api.engine).get_table_names() if t != "alembic_version"]
    with api.engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))] for t in tables}


def _send(client: ApiClient, endpoint: str, **kwargs: Any) -> Any:
    method, path = endpoint.split(" ", 1)
    for placeholder, value in getattr(client, "ids", {}).items():  # the guarded tenant's webhook, delivery, key
        path = path.replace(placeholder, value)
    return client.call(method, path.replace("{version}", "1"), **kwargs)


def _error(response: Any, case: str, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, f"{case}: {response.status_code} {response.text[:300]}"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] and error["message"], case
    return error


def test_every_write_endpoint_of_the_router_has_bad_input_cases() -> None:
    writes = {r for r in app_routes() if not r.startswith("GET ") and r.split(" ", 1)[1].startswith("/v1/")}
    assert writes == set(WRITE_ENDPOINTS)
    assert {endpoint for endpoint, _, _ in WRONG_TYPES} == set(BODY_ENDPOINTS)


def test_oversized_bodies_get_413_naming_the_limit(guarded: Any) -> None:
    admin, unchanged = guarded
    for endpoint in BODY_ENDPOINTS:
        limit = MAX_NOTIFICATION_BYTES if endpoint == "POST /v1/notifications" else MAX_BODY_BYTES
        with unchanged(endpoint):
            body = {**WRITE_ENDPOINTS[endpoint], "subject": "x" * (limit + 1)}  # type: ignore[dict-item]
            error = _error(_send(admin, endpoint, json=body), endpoint, 413)
        assert error["code"] == "body_too_large" and f"{limit} bytes" in error["message"]


MALFORMED = {
    "truncated": b'{"to": ["ana@example.org"', "not json": b"to=ana@example.org", "empty": b"",
    "not UTF-8": b'{"to": ["\xff"]}', "nested too deeply": b"[" * 20_000 + b"]" * 20_000,
    "integer too long": b'{"to": ' + b"9" * 5000 + b"}",
}


def test_malformed_json_gets_400_saying_what_is_wrong(guarded: Any) -> None:
    admin, unchanged = guarded
    for endpoint in BODY_ENDPOINTS:
        for what, raw in MALFORMED.items():
            case = f"{endpoint} {what}"
            with unchanged(case):
                error = _error(_send(admin, endpoint, data=raw, headers={"Content-Type": "application/json"}),
                               case, 400)
            assert error["code"] == "invalid_json" and error["field"] == "body", case
            assert "not valid JSON" in error["message"], case


def test_a_bogus_charset_does_not_matter_json_is_utf8(guarded: Any) -> None:
    admin, unchanged = guarded
    with unchanged("charset"):
        error = _error(admin.post("/v1/notifications", data=b'{"to": 5}',
                                  headers={"Content-Type": "application/json; charset=no-such-codec"}), "charset", 422)
    assert error["field"] == "to"


@pytest.mark.parametrize("top", [[], "text", 5, None, True], ids=repr)
def test_a_body_that_is_not_an_object_gets_422(guarded: Any, top: object) -> None:
    admin, unchanged = guarded
    for endpoint in BODY_ENDPOINTS:
        with unchanged(endpoint):
            error = _error(_send(admin, endpoint, data=json.dumps(top), headers={"Content-Type": "application/json"}),
                           endpoint, 422)
        assert error["field"] in ("body", "message"), (endpoint, error)


def test_unknown_fields_get_422_naming_them(guarded: Any) -> None:
    admin, unchanged = guarded
    cases = [(e, {**WRITE_ENDPOINTS[e], "colour": "red"}, "colour") for e in BODY_ENDPOINTS]  # type: ignore[dict-item]
    cases += [("POST /v1/notifications:batch", {"items": [{**MESSAGE, "colour": "red"}]}, "items[0].colour"),
              ("POST /v1/notifications", {**MESSAGE, "to": [{"address": "a@example.org", "nick": "A"}]},
               "to[0].nick"),
              ("PUT /v1/email-provider", {**PROVIDER, "authority_url": "https://evil.example"}, "authority_url")]
    for endpoint, body, field in cases:
        with unchanged(f"{endpoint} {field}"):
            error = _error(_send(admin, endpoint, json=body), endpoint, 422)
        assert error["field"] == field and field in error["message"], (endpoint, error)


def test_unknown_query_parameters_get_422_naming_them(guarded: Any) -> None:
    admin, unchanged = guarded
    for endpoint in WRITE_ENDPOINTS:
        with unchanged(endpoint):
            error = _error(_send(admin, endpoint, params={"dry_run": "1"}, json=WRITE_ENDPOINTS[endpoint]),
                           endpoint, 422)
        assert error["field"] == "dry_run", (endpoint, error)
    error = _error(admin.get("/v1/activity", params={"stauts": "failed"}), "misspelt filter", 422)
    assert error["field"] == "stauts"


@pytest.mark.parametrize(("endpoint", "field", "value"), WRONG_TYPES, ids=[f"{e} {f}" for e, f, _ in WRONG_TYPES])
def test_wrong_types_and_line_breaks_get_422_naming_the_field(guarded: Any, endpoint: str, field: str,
                                                                value: object) -> None:
    admin, unchanged = guarded
    with unchanged(endpoint):
        error = _error(_send(admin, endpoint, json=_with(WRITE_ENDPOINTS[endpoint] or {}, field, value)),
                       f"{endpoint} {field}", 422)
    assert error["field"] == field or error["field"].startswith(field + "."), error


@pytest.mark.parametrize(("params", "field"), [
    ({"recipient": "\x00"}, "recipient"), ({"error_code": "a\x00b"}, "error_code"), ({"status": ""}, "status"),
    ({"limit": ""}, "limit"), ({"limit": "0"}, "limit"), ({"since": "yesterday"}, "since"),
    ({"cursor": base64.urlsafe_b64encode(b"2026-01-01T00:00:00|\x00").decode()}, "cursor"),
    ({"recipient": "r" * 321}, "recipient"),
], ids=repr)
def test_bad_activity_filters_get_422_naming_the_filter(api: ApiServer, params: dict[str, str], field: str) -> None:
    error = _error(api.client("acme", "viewer").get("/v1/activity", params=params), str(params), 422)
    assert error["field"] == field


@pytest.mark.parametrize("nid", ["%00", "x" * 300, "..%2F..%2Fetc", "0" * 31 + "g"])
def test_a_malformed_notification_id_is_simply_not_found(api: ApiServer, nid: str) -> None:
    error = _error(api.client("acme", "viewer").get(f"/v1/notifications/{nid}"), nid, 404)
    assert error["code"] == "not_found"
