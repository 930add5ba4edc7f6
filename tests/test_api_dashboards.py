"""Dashboards against known data, on SQLite and PostgreSQL: the time series (per tenant, across tenants for a
platform viewer, by sender), the exact recipient and possible_duplicate filters, and the streamed CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from api.keys import create_key
from shared.models import Notification, NotificationRecipient
from shared.producer import EnqueueItem, Producer
from tests.api_harness import ApiServer

_N = Notification.__table__  # type: ignore[attr-defined]
_R = NotificationRecipient.__table__  # type: ignore[attr-defined]
T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=3)).isoformat()}
S1, S2 = "s1@acme.example", "s2@acme.example"
# name: (tenant, minutes after T0, state, seconds to the outcome, sender, possible_duplicate, message extras)
ROWS: dict[str, tuple[str, int, str, float | None, str | None, bool, dict[str, Any]]] = {
    "n1": ("acme", 10, "sent", 2, S1, False, {"body": "ask carol@example.org"}),
    "n2": ("acme", 20, "sent", 4, S1, False, {}),
    "n3": ("acme", 30, "failed", 10, S2, False, {"subject": "=HYPERLINK(\"http://x.example\")"}),
    "n4": ("acme", 65, "ambiguous", 20, S1, False, {}),
    "n5": ("acme", 70, "queued", None, None, False, {}),
    "n6": ("acme", 75, "held", None, S2, False, {}),
    "n7": ("acme", 150, "sent", 1, S1, True, {"cc": ["Bob@Example.org"]}),
    "g1": ("globex", 15, "sent", 3, "g@globex.example", False, {}),
    "g2": ("globex", 90, "failed", 5, "g@globex.example", False, {}),
}


@pytest.fixture
def known(api: ApiServer) -> Iterator[dict[str, str]]:
    """The rows of ROWS, enqueued through the producer, then moved to their known times and outcomes."""
    producer = Producer(api.engine, api.settings)
    ids = {}
    for name, (tenant, minutes, state, outcome_s, sender, duplicate, extra) in ROWS.items():
        ids[name] = producer.enqueue(tenant, {"to": [f"{name}@example.org"], "subject": name, **extra})
        created = T0 + timedelta(minutes=minutes)
        outcome = created + timedelta(seconds=outcome_s) if outcome_s is not None else created
        with api.engine.begin() as conn:
            conn.execute(update(_N).where(_N.c.id == ids[name]).values(
                created_at=created, updated_at=outcome, sent_at=outcome if state == "sent" else None, state=state,
                sender=sender, possible_duplicate=duplicate))
    yield ids


def _series(api: ApiServer, key: str, tenant: str | None = None, **params: str) -> Any:
    client = api.anonymous(key)
    headers = {"X-Tenant-Id": tenant} if tenant else {}
    response = client.get("/v1/stats/timeseries", params={**WINDOW, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _counts(summary: dict[str, Any]) -> tuple[Any, ...]:
    return (summary["enqueued"], summary["sent"], summary["failed"], summary["ambiguous"], summary["waiting"],
            summary["latency_p50_s"], summary["latency_p95_s"])


def test_timeseries_by_hour_counts_outcomes_waiting_and_latency_of_the_tenant(
        api: ApiServer, known: dict[str, str]) -> None:
    body = _series(api, api.key("acme", "viewer"), bucket="1h")
    assert [s["start"] for s in body["series"]] == [(T0 + timedelta(hours=h)).isoformat() for h in range(3)]
    # enqueued, sent, failed, ambiguous, waiting, p50, p95 (nearest rank)
    assert [_counts(s) for s in body["series"]] == [(3, 2, 1, 0, 0, 4.0, 10.0), (3, 0, 0, 1, 2, 20.0, 20.0),
                                                   (1, 1, 0, 0, 0, 1.0, 1.0)]
    assert body["series"][1]["waiting_by_state"] == {"queued": 1, "sending": 0, "retry_wait": 0, "held": 1}
    assert _counts(body["total"]) == (7, 3, 1, 1, 2, 4.0, 20.0)
    by_sender = {s["sender"]: _counts(s)[:5] for s in body["by_sender"]}
    assert by_sender == {None: (1, 0, 0, 0, 1), S1: (4, 3, 0, 1, 0), S2: (2, 0, 1, 0, 1)}
    assert "by_tenant" not in body  # one tenant's view; globex's rows are not counted anywhere


def test_timeseries_by_minute_and_by_sender(api: ApiServer, known: dict[str, str]) -> None:
    key = api.key("acme", "viewer")
    minutes = _series(api, key, bucket="1m", until=(T0 + timedelta(minutes=40)).isoformat())["series"]
    assert len(minutes) == 40
    assert {i: (s["sent"], s["failed"]) for i, s in enumerate(minutes) if s["enqueued"]} == {
        10: (1, 0), 20: (1, 0), 30: (0, 1)}
    only_s2 = _series(api, key, sender=S2)
    assert _counts(only_s2["total"])[:5] == (2, 0, 1, 0, 1)


def test_platform_viewer_reads_the_series_across_its_tenants_and_nothing_else_without_a_tenant(
        api: ApiServer, known: dict[str, str]) -> None:
    everyone = create_key(api.engine, "", "platform_viewer", tenants=None)
    body = _series(api, everyone)
    assert {t["tenant_id"]: _counts(t)[:5] for t in body["by_tenant"]} == {
        "acme": (7, 3, 1, 1, 2), "globex": (2, 1, 1, 0, 0)}
    assert body["total"]["enqueued"] == 9
    only_globex = create_key(api.engine, "", "platform_viewer", tenants=["globex"])
    assert {t["tenant_id"] for t in _series(api, only_globex)["by_tenant"]} == {"globex"}
    # naming a tenant of its list: that tenant only, read-only, like a viewer
    assert _series(api, everyone, tenant="acme")["total"]["enqueued"] == 7
    platform = api.anonymous(everyone)
    assert platform.get("/v1/activity", headers={"X-Tenant-Id": "acme"}).status_code == 200
    refused = platform.get("/v1/activity")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "X-Tenant-Id"
    assert platform.post("/v1/notifications", json={"to": ["a@example.org"]},
                         headers={"X-Tenant-Id": "acme"}).status_code == 403
    outside = api.anonymous(only_globex).get("/v1/stats/timeseries", headers={"X-Tenant-Id": "acme"})
    assert outside.status_code == 403
    # a tenant's own keys never see across tenants, a service key neither
    service = create_key(api.engine, "", "service", tenants=None)
    assert api.anonymous(service).get("/v1/stats/timeseries").json()["error"]["field"] == "X-Tenant-Id"


@pytest.mark.parametrize(("params", "field"), [
    ({"bucket": "5m"}, "bucket"), ({"since": "yesterday"}, "since"),
    ({"since": "2026-11-30T12:00:00Z", "until": "2026-11-30T11:00:00Z"}, "until"),
    ({"bucket": "1m", "since": "2026-11-01T00:00:00Z", "until": "2026-11-02T00:01:00Z"}, "since"),
    ({"sender": "a\x00b"}, "sender"), ({"buckets": "1h"}, "buckets")])
def test_timeseries_bad_input_names_the_field(api: ApiServer, params: dict[str, str], field: str) -> None:
    response = api.client("acme", "viewer").get("/v1/stats/timeseries", params=params)
    assert response.status_code == 422 and response.json()["error"]["field"] == field, response.text


def test_recipient_filter_matches_normalized_addresses_exactly_through_the_index(
        api: ApiServer, known: dict[str, str]) -> None:
    viewer = api.client("acme", "viewer")

    def ids(**params: str) -> set[str]:
        response = viewer.get("/v1/activity", params={"limit": "200", **params})
        assert response.status_code == 200, response.text
        return {i["id"] for i in response.json()["items"]}

    assert ids(recipient="  BOB@example.ORG ") == {known["n7"]}  # a cc, whatever its case and spaces
    assert ids(recipient="n2@example.org") == {known["n2"]}
    assert ids(recipient="bob@example") == set()  # no substring match
    assert ids(recipient="carol@example.org") == set()  # in a body, not a recipient
    assert ids(recipient="g1@example.org") == set()  # globex's recipient
    assert ids(possible_duplicate="true") == {known["n7"]}
    assert ids(possible_duplicate="false") == {known[n] for n in ("n1", "n2", "n3", "n4", "n5", "n6")}
    assert ids(possible_duplicate="true", status="failed") == set()
    bad = viewer.get("/v1/activity", params={"possible_duplicate": "yes"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "possible_duplicate"


def test_producer_writes_recipients_once_for_a_repeated_idempotency_key(api: ApiServer) -> None:
    producer = Producer(api.engine, api.settings)
    first = producer.enqueue("acme", {"to": ["A@example.org", "a@example.org"], "bcc": ["b@example.org"]}, "k1")
    again = producer.enqueue_many([EnqueueItem("acme", {"to": ["other@example.org"]}, "k1"),
                                   EnqueueItem("acme", {"to": ["c@example.org"]})])
    assert again[0] == first
    with api.engine.connect() as conn:
        rows = {tuple(r) for r in conn.execute(select(_R.c.notification_id, _R.c.address))}
    assert rows == {(first, "a@example.org"), (first, "b@example.org"), (again[1], "c@example.org")}


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_export_streams_the_filtered_activity_and_defuses_formulas(api: ApiServer, known: dict[str, str]) -> None:
    viewer = api.client("acme", "viewer")
    response = viewer.get("/v1/activity/export", params={"status": "failed"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, no Content-Length
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    [row] = _csv(response.text)
    assert row["id"] == known["n3"] and row["state"] == "failed" and row["sender"] == S2
    assert row["subject"] == "'=HYPERLINK(\"http://x.example\")"
    assert [r["id"] for r in _csv(viewer.get("/v1/activity/export", params={
        "recipient": "bob@example.org"}).text)] == [known["n7"]]
    everything = _csv(viewer.get("/v1/activity/export").text)
    assert [r["id"] for r in everything] == [known[n] for n in ("n7", "n6", "n5", "n4", "n3", "n2", "n1")]
    bad = viewer.get("/v1/activity/export", params={"status": "lost"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


def test_csv_export_crosses_pages_of_the_reader(api: ApiServer) -> None:
    producer = Producer(api.engine, api.settings)
    ids = producer.enqueue_many([EnqueueItem("acme", {"to": [f"u{i}@example.org"]}) for i in range(1234)])
    rows = _csv(api.client("acme", "viewer").get("/v1/activity/export").text)
    assert len(rows) == 1234 and {r["id"] for r in rows} == set(ids)
    with api.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(_R)).scalar() == 1234
