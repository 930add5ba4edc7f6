"""Tenant isolation and roles: every endpoint × (own, other, no key, revoked, expired, malformed key) × role.

The table below is the expected status of every cell. Its rows are checked against the app's router,
so a new endpoint fails `test_matrix_covers_every_endpoint` until it has a row.

- own: the caller's key on its own tenant's resource (its notification id; valid bodies).
- other: the caller's key reaching for tenant B's resource: B's notification id where the path takes
  an id, else B named in the query (`?tenant_id=globex`), which /v1 refuses as an unknown parameter and
  the page ignores.
- none / revoked / expired / malformed: no key, a revoked key of that role, one past its expiry, a key that
  is not one.
- the service role: a service key whose list holds acme but not globex; "own" names acme in X-Tenant-Id,
  "other" names globex (403). Service keys are for /v1 only: the page sends them to its login.

After every cell, tenant B's rows in every table are unchanged, and no response carries B's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from sqlalchemy import inspect, text

from api.keys import create_key, revoke_key
from api.security import CSRF_FIELD, csrf_token
from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from tests.api_harness import ApiServer, app_routes

ROLES = ("admin", "sender", "viewer", "service")
CONTEXTS = ("own", "other", "none", "revoked", "expired", "malformed")
OWN, OTHER = "acme", "globex"
B_MARKERS = (OTHER, "Globex Mailroom", "globex-only-subject")
MALFORMED_KEY = "tm_notakey_" + "x" * 40
PAST = datetime(2020, 1, 1, tzinfo=UTC)

Cell = tuple[int, int, int, int]  # admin, sender, viewer, service (a service key listing acme, not globex)
ALL_200: Cell = (200, 200, 200, 200)
ADMIN_ONLY: Cell = (200, 403, 403, 403)
SENDERS: Cell = (201, 201, 403, 201)
Q422: Cell = (422, 422, 422, 403)  # ?tenant_id= is no /v1 parameter; the service key names globex: not its own
ADMIN_ONLY_OTHER: Cell = (404, 403, 403, 403)  # B's resource: the admin may look and finds nothing
PAGE_ADMIN: Cell = (200, 403, 403, 303)  # service keys are not for the page: to the login
PAGE_ALL: Cell = (200, 200, 200, 303)
PAGE_OTHER: Cell = (404, 403, 403, 303)
PAGE_OTHER_ALL: Cell = (404, 404, 404, 303)  # B's notification: any role may look and finds nothing
PUBLIC = (ALL_200, ALL_200, 200, 200, 200, 200)
#                                     own          other        none  revoked expired malformed
MATRIX: dict[str, tuple[Cell, Cell, int, int, int, int]] = {
    "GET /v1/email-provider":         (ALL_200,    Q422,        401,  401,    401,    401),
    "PUT /v1/email-provider":         (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "DELETE /v1/email-provider":      (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "GET /v1/email-provider/history": (ALL_200,    Q422,        401,  401,    401,    401),
    "POST /v1/email-provider/history/{version}:restore": (ADMIN_ONLY, Q422, 401, 401, 401, 401),
    "POST /v1/email-provider/test":   (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "GET /v1/email-provider/setup":   (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/email-provider/usage":   (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/activity":               (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/events":                 (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/stats":                  (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/stats/timeseries":       (ALL_200,    Q422,        401,  401,    401,    401),
    "GET /v1/activity/export":        (ALL_200,    Q422,        401,  401,    401,    401),
    "POST /v1/notifications":         (SENDERS,    Q422,        401,  401,    401,    401),
    "POST /v1/notifications:batch":   (SENDERS,    Q422,        401,  401,    401,    401),
    "GET /v1/notifications/{id}":     (ALL_200,    (404, 404, 404, 403), 401, 401, 401, 401),
    "POST /v1/notifications/{id}:retry": (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "POST /v1/notifications:retry":   (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "GET /v1/webhooks":               (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "POST /v1/webhooks":              ((201, 403, 403, 403), Q422, 401, 401, 401,    401),
    "GET /v1/webhooks/{id}":          (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401,  401),
    "PATCH /v1/webhooks/{id}":        (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401,  401),
    "DELETE /v1/webhooks/{id}":       ((204, 403, 403, 403), ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "POST /v1/webhooks/{id}/secret:rotate": (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "GET /v1/webhooks/{id}/deliveries": (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "GET /v1/webhooks/{id}/deliveries/{delivery_id}": (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "POST /v1/webhooks/{id}/deliveries/{delivery_id}:replay": ((202, 403, 403, 403), ADMIN_ONLY_OTHER, 401, 401,
                                                               401, 401),
    "GET /v1/keys":                   (ADMIN_ONLY, Q422,        401,  401,    401,    401),
    "POST /v1/keys":                  ((201, 403, 403, 403), Q422, 401, 401, 401,    401),
    "PATCH /v1/keys/{id}":            (ADMIN_ONLY, ADMIN_ONLY_OTHER, 401, 401, 401,  401),
    "DELETE /v1/keys/{id}":           ((204, 403, 403, 403), ADMIN_ONLY_OTHER, 401, 401, 401, 401),
    "GET /v1/openapi.json":           PUBLIC,
    "GET /healthz":                   PUBLIC,
    "GET /readyz":                    PUBLIC,
    "GET /metrics":                   PUBLIC,
    "GET /ui/login":                  PUBLIC,
    "POST /ui/login":                 ((303,) * 4, (303,) * 4,  200,  200,    200,    200),  # 200: "not valid" page
    "GET /ui":                        ((303,) * 4, (303,) * 4,  303,  303,    303,    303),  # to the page / to login
    "GET /ui/email-provider":         (PAGE_ALL,   PAGE_ALL,    303,  303,    303,    303),
    "POST /ui/email-provider":        (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "POST /ui/email-provider/test":   (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "POST /ui/email-provider/restore": (PAGE_ADMIN, PAGE_ADMIN, 303,  303,    303,    303),
    "GET /ui/activity":               (PAGE_ALL,   PAGE_ALL,    303,  303,    303,    303),
    "GET /ui/activity/export":        (PAGE_ALL,   PAGE_ALL,    303,  303,    303,    303),
    "GET /ui/notifications/{id}":     (PAGE_ALL,   PAGE_OTHER_ALL, 303, 303,  303,    303),
    "POST /ui/activity/retry":        (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "GET /ui/email-provider/setup":   (PAGE_ALL,   PAGE_ALL,    303,  303,    303,    303),
    "GET /static/page.js":            PUBLIC,  # public, like the login form
    "GET /static/page.css":           PUBLIC,
    "GET /static/pico.min.css":       PUBLIC,
    "GET /ui/webhooks":               (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "POST /ui/webhooks":              (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "GET /ui/webhooks/{id}":          (PAGE_ADMIN, PAGE_OTHER,  303,  303,    303,    303),
    "POST /ui/webhooks/{id}":         (PAGE_ADMIN, PAGE_OTHER,  303,  303,    303,    303),
    "GET /ui/keys":                   (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "POST /ui/keys":                  (PAGE_ADMIN, PAGE_ADMIN,  303,  303,    303,    303),
    "POST /ui/keys/{id}/revoke":      (PAGE_ADMIN, PAGE_OTHER,  303,  303,    303,    303),
}
PROVIDER = {"provider": "customer", "service": "microsoft_graph", "sender_address": DEMO_SENDER,
            "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET,
            "cloud": "global"}
MESSAGE = {"to": ["ana@example.org"], "subject": "Review due", "body": "Hi"}
BODIES: dict[str, dict[str, Any]] = {  # what each endpoint is sent: JSON for /v1, a form for the page
    "PUT /v1/email-provider": {"json": PROVIDER},
    "POST /v1/email-provider/test": {"json": {"to": "ana@example.org"}},
    "POST /v1/notifications": {"json": MESSAGE},
    "POST /v1/notifications:batch": {"json": {"items": [MESSAGE]}},
    "POST /v1/webhooks": {"json": {"url": "https://hooks.acme.example/new"}},
    "PATCH /v1/webhooks/{id}": {"json": {"description": "changed"}},
    "POST /v1/keys": {"json": {"role": "viewer"}},
    "PATCH /v1/keys/{id}": {"json": {"expires_at": "2099-01-01T00:00:00Z"}},
    "POST /v1/notifications:retry": {"json": {"state": "failed", "limit": 10}},
    "POST /ui/email-provider": {"data": PROVIDER},
    "POST /ui/email-provider/test": {"data": {"to": "ana@example.org"}},
    "POST /ui/webhooks": {"data": {"url": "https://hooks.acme.example/new"}},
    "POST /ui/webhooks/{id}": {"data": {"action": "rotate"}},
    "POST /ui/keys": {"data": {"role": "viewer"}},
    "POST /ui/email-provider/restore": {"data": {"version": "1"}},
    "POST /ui/activity/retry": {"data": {"id": "0" * 32}},
}


def test_matrix_covers_every_endpoint() -> None:
    assert set(MATRIX) == app_routes()


def expected(endpoint: str, context: str, role: str) -> int:
    row = MATRIX[endpoint]
    cell = row[CONTEXTS.index(context)]
    return cell[ROLES.index(role)] if isinstance(cell, tuple) else cell


def _key(api: ApiServer, role: str, **kwargs: Any) -> str:
    if role == "service":
        return create_key(api.engine, "", "service", tenants=[OWN], **kwargs)
    return create_key(api.engine, OWN, role, **kwargs)


@pytest.fixture
def tenants(api: ApiServer) -> Iterator[dict[str, Any]]:
    """Tenants A (acme) and B (globex), each with a webhook endpoint, a saved provider (so a pending delivery),
    a notification and a spare key; A's keys of every role, revoked and expired ones too."""
    ids: dict[str, dict[str, str]] = {}
    for tenant, name, subject in ((OWN, "Acme Mail", "acme subject"), (OTHER, B_MARKERS[1], B_MARKERS[2])):
        admin = api.client(tenant, "admin")
        hook = admin.post("/v1/webhooks", json={"url": f"https://hooks.{tenant}.example/h"}).json()["id"]
        assert admin.put("/v1/email-provider", json={**PROVIDER, "sender_name": name}).status_code == 200
        [delivery] = admin.get(f"/v1/webhooks/{hook}/deliveries").json()["items"]
        ids[tenant] = {"notification": admin.post("/v1/notifications", json={**MESSAGE, "subject": subject}).json()[
            "id"], "webhook": hook, "delivery": delivery["id"], "key": api.key(tenant, "viewer").split("_")[1]}
    keys = {role: _key(api, role) for role in ROLES}
    expired = {role: _key(api, role, expires_at=PAST) for role in ROLES}
    revoked = {}
    for role in ROLES:
        revoked[role] = _key(api, role)
        assert revoke_key(api.engine, revoked[role].split("_")[1])
    yield {"ids": ids, "keys": keys, "revoked": revoked, "expired": expired}


def _b_rows(api: ApiServer) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of tenant B, table by table."""
    out = {}
    with api.engine.connect() as conn:
        inspector = inspect(conn)  # on this connection: SQLite here takes its write lock per transaction
        for table in inspector.get_table_names():
            if "tenant_id" in {c["name"] for c in inspector.get_columns(table)}:
                rows = conn.execute(text(f"SELECT * FROM {table} WHERE tenant_id = :t ORDER BY 1"), {"t": OTHER})
                out[table] = [tuple(r) for r in rows]
    return out


def _path(endpoint: str, ids: dict[str, str]) -> str:
    path = endpoint.split(" ", 1)[1]
    kind = "webhook" if "/webhooks/" in path else "key" if "/keys/" in path else "notification"
    return path.replace("{id}", ids[kind]).replace("{delivery_id}", ids["delivery"]).replace("{version}", "1")


def _call(api: ApiServer, endpoint: str, context: str, role: str, key: str | None,
          ids: dict[str, dict[str, str]]) -> requests.Response:
    method = endpoint.split(" ", 1)[0]
    path = _path(endpoint, ids[OTHER] if context == "other" else ids[OWN])
    by_query = context == "other" and "{id}" not in endpoint and role != "service"
    params = {"tenant_id": OTHER} if by_query else None
    kwargs: dict[str, Any] = dict(BODIES.get(endpoint, {}))
    session = requests.Session()
    session.trust_env = False
    if role == "service":  # a service key names its tenant: acme is in its list, globex is not
        session.headers["X-Tenant-Id"] = OTHER if context == "other" else OWN
    if endpoint == "POST /ui/login":
        kwargs["data"] = {"key": key or ""}
    elif key is not None and path.startswith("/ui"):
        session.cookies.set("tm_key", key, path="/ui")
        if method == "POST":  # the form's CSRF field, as the page gives it to this key's session
            kwargs["data"] = {**kwargs.get("data", {}), CSRF_FIELD: csrf_token(key)}
    elif key is not None:
        session.headers["Authorization"] = f"Bearer {key}"
    with session:
        return session.request(method, api.base_url + path, params=params, allow_redirects=False, timeout=60,
                               **kwargs)


@pytest.mark.parametrize("endpoint", sorted(MATRIX))
def test_tenant_isolation_and_role_matrix(api: ApiServer, tenants: dict[str, Any], endpoint: str) -> None:
    before = _b_rows(api)
    observed, wanted = {}, {}
    for context in CONTEXTS:
        for role in ROLES:
            key = {"own": tenants["keys"][role], "other": tenants["keys"][role], "none": None,
                   "revoked": tenants["revoked"][role], "expired": tenants["expired"][role],
                   "malformed": MALFORMED_KEY}[context]
            response = _call(api, endpoint, context, role, key, tenants["ids"])
            observed[(context, role)] = response.status_code
            wanted[(context, role)] = expected(endpoint, context, role)
            leaked = [m for m in B_MARKERS + tuple(tenants["ids"][OTHER].values()) if m in response.text]
            assert not leaked, f"{endpoint} {context} {role}: tenant B's data in the answer: {leaked}"
            if response.status_code >= 400 and endpoint.split(" ", 1)[1].startswith("/v1/"):
                assert response.json()["error"]["code"], response.text
    assert observed == wanted
    assert _b_rows(api) == before, f"{endpoint}: tenant B's rows changed"
