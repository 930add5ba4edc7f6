"""A real webhook receiver for tests: an aiohttp server on loopback that verifies Standard Webhooks
signatures with `standardwebhooks`, counts raw deliveries and keeps one body per webhook-id.

`down()` closes the server and every connection (senders get connection refused); `up()` listens
again on the same port. `/redirect` answers 307 to `/hook`, to show redirects are not followed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Receiver:
    """What the receiver got: `raw` every verified delivery's id in order, `unique` id → payload."""

    secret: str = ""
    raw: list[str] = field(default_factory=list)
    unique: dict[str, Any] = field(default_factory=dict)
    bodies: dict[str, set[bytes]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # (path, headers, body) of every request
    rejected: int = 0
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True).start()
        self.up()
        return self

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(30)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(30)

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/redirect", self._redirect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _redirect(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": await request.read()})
        raise web.HTTPTemporaryRedirect("/hook")

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=400, text="bad signature")
        msg_id = request.headers["webhook-id"]
        self.raw.append(msg_id)
        self.bodies.setdefault(msg_id, set()).add(body)
        self.unique.setdefault(msg_id, payload)
        return web.Response(status=204)
