"""Producers never depend on Redis: with the API's Redis stopped, notifications are still accepted
and committed; the rate limit fails open (logged, counted) and comes back with Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from shared.settings import Settings
from tenantmail.embedded import start_redis
from tests.api_harness import ApiServer
from tests.stack import wait_until

MESSAGE = {"to": ["ana@example.org"], "subject": "Review due", "body": "<p>Hi</p>", "body_type": "html"}


class PrivateRedis:
    """A redis-server of this test alone, which it may stop and start again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url, self.proc = start_redis(tmp)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def start(self) -> None:
        self.url, self.proc = start_redis(self.tmp, port=self.port)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


def _stored(api: ApiServer, nid: str) -> bool:
    with api.engine.connect() as conn:
        return conn.execute(text("SELECT state FROM notification WHERE id = :id"), {"id": nid}).scalar() == "queued"


def _fail_open_total(api: ApiServer) -> float:
    metrics = api.anonymous().get("/metrics").text
    line = next((m for m in metrics.splitlines()
                 if m.startswith('tenantmail_ratelimit_fail_open_total{limit="notification"}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_notifications_are_accepted_with_redis_stopped_and_limited_again_once_it_is_back(
        make_api: Callable[[Settings], ApiServer], api_settings: Settings, private_redis: PrivateRedis) -> None:
    # given: an API whose rate limit (2 a minute) lives in a Redis of its own, which then stops
    api = make_api(api_settings.model_copy(update={"redis_url": private_redis.url,
                                                   "api_notifications_per_minute": 2}))
    sender, admin = api.client("acme", "sender"), api.client("acme", "admin")
    assert sender.post("/v1/notifications", json=MESSAGE).status_code == 201
    private_redis.stop()

    # when: a producer posts one notification and a batch of two, over the limit
    with structlog.testing.capture_logs() as logs:
        one = sender.post("/v1/notifications", json={**MESSAGE, "idempotency_key": "down-1"})
        batch = sender.post("/v1/notifications:batch", json={"items": [MESSAGE, MESSAGE]})

    # then: both are accepted and in the outbox, the fail-open is logged and counted
    assert one.status_code == 201, one.text
    assert batch.status_code == 201, batch.text
    assert all(_stored(api, nid) for nid in [one.json()["id"], *batch.json()["ids"]])
    assert [e["limit"] for e in logs if e["event"] == "ratelimit.fail_open"] == ["notification", "notification"]
    assert _fail_open_total(api) == 3
    # ... no other endpoint that reaches Redis answers 500: Send test is refused for now, readiness says why
    test = admin.post("/v1/email-provider/test", json={"to": "ana@example.org"})
    assert test.status_code == 503 and test.headers["Retry-After"] == "5", test.text
    assert test.json()["error"]["code"] == "rate_limit_unavailable"
    ready = api.anonymous().get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")
    assert admin.get("/v1/activity").status_code == 200

    # when: Redis is back (empty: a new window)
    private_redis.start()
    wait_until(lambda: api.anonymous().get("/readyz").status_code == 200, what="the API to see Redis again")

    # then: the limit applies again
    assert [sender.post("/v1/notifications", json=MESSAGE).status_code for _ in range(3)] == [201, 201, 429]
    assert _fail_open_total(api) == 3
