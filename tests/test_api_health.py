"""/healthz and /readyz of the API against real PostgreSQL/SQLite and Redis."""

from __future__ import annotations

from collections.abc import Callable

import requests

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
