"""Tenant isolation and roles: every endpoint × (own, other, no key, revoked key, malformed key) × role.

The table below is the expected status of every cell. Its rows are checked against the app's router,
so a new endpoint fails `test_matrix_covers_every_endpoint` until it has a row.

- own: the caller's key on its own tenant's resource (its notification id; valid bodies).
- other: the caller's key reaching for tenant B's resource: B's notification id where the path takes
  an id, else B named in the query (`?tenant_id=globex`), which /v1 refuses as an unknown parameter and
  the page ignores.
- none / revoked / malformed: no key, a revoked key of that role, a key that is not one.

After every cell, tenant B's rows in every table are unchanged, and no response carries B's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import inspect, text

from api.keys import revoke_key
from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from tests.api_harness import ApiServer, app_routes

ROLES = ("admin", "sender", "viewer")
CONTEXTS = ("own", "other", "none", "revoked", "malformed")
OWN, OTHER = "acme", "globex"
B_MARKERS = (OTHER, "Globex Mailroom", "globex-only-subject")
MALFORMED_KEY = "tm_notakey_" + "x" * 40

_A, _S, _V = 0, 1, 2  # index of admin, sender, viewer in a role triple
ALL_200 = (200, 200, 200)
ADMIN_ONLY = (200, 403, 403)
SENDERS = (201, 201, 403)
Q422 = (422, 422, 422)  # ?tenant_id= is not a parameter of any /v1 operation
#                                     own          other        none  revoked  malformed
MATRIX: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], int, int, int]] = {
    "GET /v1/email-provider":         (ALL_200,    Q422,        401,  401,     401),
    "PUT /v1/email-provider":         (ADMIN_ONLY, Q422,        401,  401,     401),
    "DELETE /v1/email-provider":      (ADMIN_ONLY, Q422,        401,  401,     401),
    "GET /v1/email-provider/history": (ALL_200,    Q422,        401,  401,     401),
    "POST /v1/email-provider/history/{version}:restore": (ADMIN_ONLY, Q422, 401, 401, 401),
    "POST /v1/email-provider/test":   (ADMIN_ONLY, Q422,        401,  401,     401),
    "GET /v1/activity":               (ALL_200,    Q422,        401,  401,     401),
    "GET /v1/events":                 (ALL_200,    Q422,        401,  401,     401),
    "GET /v1/stats":                  (ALL_200,    Q422,        401,  401,     401),
    "POST /v1/notifications":         (SENDERS,    Q422,        401,  401,     401),
    "POST /v1/notifications:batch":   (SENDERS,    Q422,        401,  401,     401),
    "GET /v1/notifications/{id}":     (ALL_200,    (404,) * 3,  401,  401,     401),
    "POST /v1/notifications/{id}:retry": (ADMIN_ONLY, (404, 403, 403), 401, 401, 401),
    "POST /v1/notifications:retry":   (ADMIN_ONLY, Q422,        401,  401,     401),
    "GET /v1/openapi.json":           (ALL_200,    ALL_200,     200,  200,     200),
    "GET /healthz":                   (ALL_200,    ALL_200,     200,  200,     200),
    "GET /readyz":                    (ALL_200,    ALL_200,     200,  200,     200),
    "GET /metrics":                   (ALL_200,    ALL_200,     200,  200,     200),
    "GET /ui/login":                  (ALL_200,    ALL_200,     200,  200,     200),
    "POST /ui/login":                 ((303,) * 3, (303,) * 3,  200,  200,     200),  # 200: "not valid" page
    "GET /ui":                        ((303,) * 3, (303,) * 3,  303,  303,     303),  # to the page / to login
    "GET /ui/email-provider":         (ALL_200,    ALL_200,     303,  303,     303),
    "POST /ui/email-provider":        (ADMIN_ONLY, ADMIN_ONLY,  303,  303,     303),
    "POST /ui/email-provider/test":   (ADMIN_ONLY, ADMIN_ONLY,  303,  303,     303),
    "POST /ui/email-provider/restore": (ADMIN_ONLY, ADMIN_ONLY, 303,  303,     303),
    "GET /ui/activity":               (ALL_200,    ALL_200,     303,  303,     303),
    "POST /ui/activity/retry":        (ADMIN_ONLY, ADMIN_ONLY,  303,  303,     303),
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
    "POST /v1/notifications:retry": {"json": {"state": "failed", "limit": 10}},
    "POST /ui/email-provider": {"data": PROVIDER},
    "POST /ui/email-provider/test": {"data": {"to": "ana@example.org"}},
    "POST /ui/email-provider/restore": {"data": {"version": "1"}},
    "POST /ui/activity/retry": {"data": {"id": "0" * 32}},
}


def test_matrix_covers_every_endpoint() -> None:
    assert set(MATRIX) == app_routes()


def expected(endpoint: str, context: str, role: str) -> int:
    row = MATRIX[endpoint]
    cell = row[CONTEXTS.index(context)]
    return cell[ROLES.index(role)] if isinstance(cell, tuple) else cell


@pytest.fixture
def tenants(api: ApiServer) -> Iterator[dict[str, Any]]:
    """Tenants A (acme) and B (globex), each with a saved provider and a notification; keys of every role."""
    ids = {}
    for tenant, name, subject in ((OWN, "Acme Mail", "acme subject"), (OTHER, B_MARKERS[1], B_MARKERS[2])):
        admin = api.client(tenant, "admin")
        assert admin.put("/v1/email-provider", json={**PROVIDER, "sender_name": name}).status_code == 200
        ids[tenant] = admin.post("/v1/notifications", json={**MESSAGE, "subject": subject}).json()["id"]
    keys = {role: api.key(OWN, role) for role in ROLES}
    revoked = {}
    for role in ROLES:
        revoked[role] = api.key(OWN, role)
        assert revoke_key(api.engine, revoked[role].split("_")[1])
    yield {"ids": ids, "keys": keys, "revoked": revoked}


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


def _call(api: ApiServer, endpoint: str, context: str, key: str | None, ids: dict[str, str]) -> requests.Response:
    method, path = endpoint.split(" ", 1)
    path = path.replace("{id}", ids[OTHER] if context == "other" else ids[OWN]).replace("{version}", "1")
    params = {"tenant_id": OTHER} if context == "other" and "{id}" not in endpoint else None
    kwargs: dict[str, Any] = dict(BODIES.get(endpoint, {}))
    session = requests.Session()
    session.trust_env = False
    if endpoint == "POST /ui/login":
        kwargs["data"] = {"key": key or ""}
    elif key is not None and path.startswith("/ui"):
        session.cookies.set("tm_key", key, path="/ui")
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
                   "revoked": tenants["revoked"][role], "malformed": MALFORMED_KEY}[context]
            response = _call(api, endpoint, context, key, tenants["ids"])
            observed[(context, role)] = response.status_code
            wanted[(context, role)] = expected(endpoint, context, role)
            leaked = [m for m in B_MARKERS + (tenants["ids"][OTHER],) if m in response.text]
            assert not leaked, f"{endpoint} {context} {role}: tenant B's data in the answer: {leaked}"
            if response.status_code >= 400 and endpoint.split(" ", 1)[1].startswith("/v1/"):
                assert response.json()["error"]["code"], response.text
    assert observed == wanted
    assert _b_rows(api) == before, f"{endpoint}: tenant B's rows changed"
