"""Per-process runtime: one event loop thread, one aiohttp session, one Redis pool, one SMTP pool.

Celery's threads pool runs tasks in plain threads; they hand coroutines to this loop with
`run()`, so hundreds of sends are in flight per process on one session. Created lazily and keyed
on the PID, never at import time (Celery forks, tests override settings).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
from sqlalchemy import Engine

from shared.db import make_engine
from shared.providers import ProviderResolver
from shared.redis_client import async_client, sync_client
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.graph import GraphClient
from transport.quota_windows import QuotaWindows
from transport.send_gate import GatedConnector
from transport.smtp import SmtpRelayClient
from transport.tokens import TokenProvider
from worker.breakers import Breakers
from worker.sendmarks import SendMarks
from worker.throttle import MailboxThrottle

T = TypeVar("T")


class Runtime:
    """Everything a worker process shares between its task threads."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.engine: Engine = make_engine(settings, pool_size=settings.worker_concurrency + 2)
        self.box = SecretBox.from_settings(settings)
        self.resolver = ProviderResolver(self.engine, self.box, settings)
        self.redis_sync = sync_client(redis_url)
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tm-msal")
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tm-loop", daemon=True)
        self._thread.start()
        self.run(self._setup(redis_url))

    async def _setup(self, redis_url: str) -> None:
        s = self.settings
        ssl_ctx = ssl.create_default_context(cafile=s.ca_bundle) if s.ca_bundle else ssl.create_default_context()
        self.session = aiohttp.ClientSession(  # Graph's session: its requests may carry a send gate
            connector=GatedConnector(limit=s.max_connections, ssl=ssl_ctx, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=s.http_timeout_s, sock_connect=s.http_connect_timeout_s),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # Graph sets no cookie we need; skips the jar per request
        )
        # Blocking pool: hundreds of sends share it, and a burst must wait for a connection rather
        # than fail after Graph already accepted the message.
        self.redis = async_client(redis_url, max_connections=128, wait_for_connection_s=30)
        self.graph = GraphClient(self.session)
        self.throttle = MailboxThrottle(
            self.redis, limit=s.mailbox_concurrency, lease_ms=int(s.http_timeout_s * 1000) + 5_000,
            pacing_ms=s.mailbox_pacing_ms, recheck_ms=s.mailbox_block_recheck_ms,
        )
        self.marks = SendMarks(self.redis)
        self.quotas = QuotaWindows(self.redis_sync)  # Exchange's sending limits (worker.quota_gate)
        self.breakers = Breakers(self.redis, s)  # one view per process, shared by its batches
        self.tokens = TokenProvider(self.redis, self.redis_sync, self.box, s, self._executor)
        # The platform default's relay; connections open on first use and are reused after.
        self.smtp = SmtpRelayClient(s) if s.smtp_host else None

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the process loop from any other thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine on the process loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        """Close sessions and stop the loop."""
        async def _close() -> None:
            if self.smtp is not None:
                await self.smtp.close()
            await self.session.close()
            await self.redis.aclose()
        try:
            self.run(_close(), timeout_s=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._executor.shutdown(wait=False)
            self.engine.dispose()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (it halves the event loop's share of CPU per send), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings, redis_url: str) -> Runtime:
    """The runtime of this process, created on first use (and again after a fork)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime(settings, redis_url)
        return _runtime


def close_runtime() -> None:
    """Close this process's runtime if it has one."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
        _runtime = None
