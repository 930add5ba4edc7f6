"""/healthz and /readyz of the API against real PostgreSQL/SQLite and Redis."""

from __future__ import annotations

from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.api_harness import ApiServer


def test_readyz_is_ready_with_database_migrated_and_redis_up(api: ApiServer) -> None:
    r = requests.get(f"{api.base_url}/readyz", timeout=10)

    assert r.status_code == 200
    assert r.json() == {"ok": True, "checks": {"database": "ok", "redis": "ok"}}
    assert requests.get(f"{api.base_url}/healthz", timeout=10).status_code == 200


def test_readyz_is_not_ready_when_redis_is_unreachable(make_api: Callable[[Settings], ApiServer],
                                                       api_settings: Settings) -> None:
    server = make_api(api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))

    r = requests.get(f"{server.base_url}/readyz", timeout=20)

    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["redis"].startswith("unreachable")


def _scrape(api: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(f"{api.base_url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_api_metrics_count_requests_by_route_and_read_the_queue_from_the_database(api: ApiServer) -> None:
    # given three notifications enqueued through the API, one looked up, and two refused requests
    sender = api.client("acme", "sender")
    ids = [sender.post("/v1/notifications", json={"to": [f"u{i}@example.org"], "subject": "hi"}).json()["id"]
           for i in range(3)]
    assert sender.get(f"/v1/notifications/{ids[0]}").status_code == 200
    assert api.anonymous().get("/v1/activity").status_code == 401
    assert sender.get("/v1/notifications/no-such-id").status_code == 404

    # when /metrics is scraped
    samples = _scrape(api)

    # then requests are counted by route template (never raw ids) and status
    def requests_of(method: str, route: str, status: str) -> float:
        return samples.get(("tenantmail_api_requests_total",
                            (("method", method), ("route", route), ("status", status))), 0.0)

    assert requests_of("POST", "/v1/notifications", "201") == 3
    assert requests_of("GET", "/v1/notifications/{id}", "200") == 1
    assert requests_of("GET", "/v1/notifications/{id}", "404") == 1
    assert requests_of("GET", "/v1/activity", "401") == 1
    assert not any(ids[0] in str(labels) for _, labels in samples)
    assert samples[("tenantmail_api_request_seconds_count", (("route", "/v1/notifications"),))] == 3

    # and the queue gauges say what the database holds (no worker runs here)
    assert samples[("tenantmail_queue_depth", (("state", "queued"),))] == 3
    assert samples[("tenantmail_queue_depth", (("state", "sending"),))] == 0
    assert samples[("tenantmail_oldest_queued_age_seconds", ())] > 0
