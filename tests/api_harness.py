"""The API on a real port: `ApiServer` runs `create_app` under `web.AppRunner` in a background loop."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from aiohttp import web
from sqlalchemy import Engine, text

from api.app import create_app
from api.keys import create_key
from shared.secretbox import SecretBox
from shared.settings import Settings


@dataclass
class ApiServer:
    """A running API; `client(tenant, role)` gives a requests.Session carrying a fresh key."""

    settings: Settings
    engine: Engine
    box: SecretBox
    base_url: str = ""
    responses: list[str] = field(default_factory=list)  # every body seen, for secret scans
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _sessions: list[requests.Session] = field(default_factory=list)

    def start(self) -> ApiServer:
        threading.Thread(target=self._loop.run_forever, name="api-test-loop", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self.settings, self.engine, box=self.box))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for s in self._sessions:
            s.close()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def key(self, tenant: str, role: str) -> str:
        """A new API key."""
        return create_key(self.engine, tenant, role)

    def client(self, tenant: str, role: str = "admin") -> ApiClient:
        """A client authenticated as a new key of `tenant` with `role`."""
        return self.anonymous(self.key(tenant, role))

    def anonymous(self, key: str | None = None) -> ApiClient:
        """A client with the given key, or none."""
        session = requests.Session()
        session.trust_env = False
        if key:
            session.headers["Authorization"] = f"Bearer {key}"
        self._sessions.append(session)
        return ApiClient(self, session)


@dataclass
class ApiClient:
    """Thin requests wrapper that records every response body on the server object."""

    server: ApiServer
    session: requests.Session

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.server.base_url + path, timeout=60, **kwargs)
        self.server.responses.append(response.text)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("DELETE", path, **kwargs)


def app_routes() -> set[str]:
    """Every `METHOD /path` the app serves (HEAD mirrors GET), read from its router: tests that must
    cover every endpoint compare their tables with this."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1"), engine=None, box=object(),  # type: ignore[arg-type]
                     redis=object())
    return {f"{r.method} {r.resource.canonical}" for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


def assert_secret_nowhere(server: ApiServer, secret: str, logs: list[dict[str, Any]],
                          tables: tuple[str, ...] = ("provider_config", "provider_history", "api_key",
                                                     "activity_event")) -> None:
    """Fail if `secret` is in any response the server gave, the captured logs, a table row or a Redis value."""
    needle = secret.encode()
    assert not any(secret in body for body in server.responses), "in a response"
    assert secret not in repr(logs), "in a log line"
    with server.engine.connect() as conn:
        for table in tables:
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert all(needle not in (v if isinstance(v, bytes) else str(v).encode()) for v in row), table
    r = redis.Redis.from_url(server.settings.redis_url or "")
    for key in r.keys("*"):
        assert needle not in key and needle not in (r.dump(key) or b""), key


class PageSession(requests.Session):
    """A browser-like session of the admin page: its POSTs to /ui carry the CSRF field the page's forms
    carry (the token of the key in the page's cookie), as a form submitted from the page would."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        from api.security import CSRF_FIELD, csrf_token

        key = self.cookies.get("tm_key")
        if str(method).upper() == "POST" and "/ui/" in str(url) and not str(url).endswith("/ui/login") and key:
            kwargs["data"] = {CSRF_FIELD: csrf_token(key), **dict(kwargs.get("data") or {})}
        return super().request(method, url, *args, **kwargs)
