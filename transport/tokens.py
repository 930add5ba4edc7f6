"""Access tokens for Graph: MSAL client credentials, cached in process and in Redis.

Lookup order for a provider's token key (tenant, client id, config version):
1. the in-process cache, so a send does not touch Redis for its token;
2. Redis (`tm:tok:<key>`, encrypted with the SecretBox), filled by whichever process got it;
3. MSAL, under a fleet-wide single-flight lock (`SET tm:toklock:<key> NX PX`), so one token
   request per tenant per token lifetime reaches Entra ID however many workers run.

MSAL is blocking (requests), so it runs in an executor. Building the MSAL app and turning its
error dicts and exceptions into TokenError (permanent, with the AADSTS code) or TransientError is
transport.entra's job, the same for a client secret and a certificate.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import msal
import requests.adapters

from shared.codes import Code
from shared.errors import TokenError, TransientError
from shared.metrics import metrics
from shared.providers import ResolvedProvider
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.entra import TimeoutSession, acquire_for_client, confidential_app
from transport.redis_errors import redis_boundary

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_FAILURE_TTL_S = 30.0
TOKEN_KEY_PATTERN = "tm:tok:*"  # every cached token (`tm:tok:<token key>`), for key rotation


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A bearer token and when to stop using it (epoch seconds)."""

    access_token: str
    expires_at: float
    refresh_at: float


class TokenProvider:
    """Gets and caches Graph tokens for resolved providers."""

    def __init__(self, redis: Any, redis_sync: Any, box: SecretBox, settings: Settings, executor: Executor) -> None:
        self._redis = redis
        self._redis_sync = redis_sync
        # Long enough for discovery plus the token request at their timeouts; a holder that dies
        # delays that tenant's token by at most this.
        self._lock_ms = int((2 * settings.token_timeout_s + 5) * 1000)
        self._box = box
        self._settings = settings
        self._executor = executor
        self._local: dict[str, CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._apps: dict[str, msal.ConfidentialClientApplication] = {}
        self._failures: dict[str, tuple[float, TokenError]] = {}
        self._release_sync = redis_sync.register_script(_RELEASE)
        # One pooled session for every MSAL app of this process: one TLS connection per authority
        # host instead of one per tenant.
        self._http = TimeoutSession(settings.token_timeout_s, settings.ca_bundle or True)
        self._http.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=32))
        self.msal_requests = 0

    async def get(self, provider: ResolvedProvider) -> str:
        """A valid access token for the provider (raises TokenError or TransientError)."""
        key = provider.token_key
        hit = self._local.get(key)
        if hit and time.time() < hit.refresh_at:
            metrics.token_lookups.labels("memory").inc()
            return hit.access_token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._local.get(key)
            if hit and time.time() < hit.refresh_at:
                return hit.access_token
            failure = self._failures.get(key)
            if failure and failure[0] > time.time():
                raise failure[1]
            try:
                with redis_boundary("token cache"):
                    token = await self._from_redis_or_entra(provider)
            except TokenError as exc:
                metrics.token_errors.labels(exc.code or "").inc()
                self._failures[key] = (time.time() + _FAILURE_TTL_S, exc)
                raise
            except TransientError as exc:
                metrics.token_errors.labels(exc.code or "").inc()
                if hit and time.time() < hit.expires_at - 30:
                    return hit.access_token  # a refresh failed; the current token is still good
                raise
            self._local[key] = token
            return token.access_token

    async def has_token(self, provider: ResolvedProvider) -> bool:
        """Whether a token is cached here or in Redis, so that getting one needs no call to Entra ID."""
        hit = self._local.get(provider.token_key)
        if hit and time.time() < hit.refresh_at:
            return True
        with redis_boundary("token cache"):
            return bool(await self._redis.exists(f"tm:tok:{provider.token_key}"))

    async def invalidate(self, provider: ResolvedProvider, access_token: str) -> None:
        """Drop a token Graph rejected, here and in Redis (only if it is still that token)."""
        key = provider.token_key
        if (hit := self._local.get(key)) and hit.access_token == access_token:
            del self._local[key]
        with redis_boundary("token cache"):
            cached = await self._read_redis(key)
            if cached and cached.access_token == access_token:
                await self._redis.delete(f"tm:tok:{key}")
        app = self._apps.get(key)
        if app is not None:
            for at in list(app.token_cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                app.token_cache.remove_at(at)

    async def _from_redis_or_entra(self, provider: ResolvedProvider) -> CachedToken:
        key = provider.token_key
        deadline = time.monotonic() + self._lock_ms / 1000 + 5
        loop = asyncio.get_running_loop()
        while True:
            cached = await self._read_redis(key)
            if cached and time.time() < cached.refresh_at:
                metrics.token_lookups.labels("redis").inc()
                return cached
            if not await self._redis.exists(f"tm:toklock:{key}"):
                # The lock is taken in the executor thread, right before MSAL runs: a request
                # queued behind other tenants' must not hold the fleet-wide lock while it waits.
                token = await loop.run_in_executor(self._executor, self._acquire_locked, provider)
                if token is not None:
                    return token
            if time.monotonic() > deadline:
                raise TransientError("another worker holds the token lock too long", code=Code.TOKEN_LOCK_TIMEOUT)
            await asyncio.sleep(0.05)

    def _acquire_locked(self, provider: ResolvedProvider) -> CachedToken | None:
        """Under the fleet-wide lock: re-check Redis, else ask Entra ID and store the token.

        Returns None when another process holds the lock (the caller waits for its token).
        """
        key = provider.token_key
        owner = uuid.uuid4().hex
        if not self._redis_sync.set(f"tm:toklock:{key}", owner, nx=True, px=self._lock_ms):
            return None
        try:
            blob = self._redis_sync.get(f"tm:tok:{key}")
            cached = self._decode(blob) if blob else None
            if cached and time.time() < cached.refresh_at:
                return cached
            token = self._acquire_blocking(provider)
            metrics.token_lookups.labels("entra").inc()
            self._redis_sync.set(f"tm:tok:{key}", self._encode(token), ex=max(1, int(token.expires_at - time.time())))
            return token
        finally:
            self._release_sync(keys=[f"tm:toklock:{key}"], args=[owner])

    def _decode(self, blob: bytes) -> CachedToken:
        data = json.loads(self._box.decrypt(blob))
        return CachedToken(data["t"], data["e"], data["r"])

    def _encode(self, token: CachedToken) -> bytes:
        return self._box.encrypt(json.dumps({"t": token.access_token, "e": token.expires_at, "r": token.refresh_at}))

    async def _read_redis(self, key: str) -> CachedToken | None:
        blob = await self._redis.get(f"tm:tok:{key}")
        return self._decode(blob) if blob else None

    def _acquire_blocking(self, provider: ResolvedProvider) -> CachedToken:
        app = self._app(provider)
        for at in list(app.token_cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            app.token_cache.remove_at(at)  # we only get here when we want a new token
        self.msal_requests += 1
        result = acquire_for_client(app, provider.cloud)
        now = time.time()
        expires_in = float(result.get("expires_in", 3599))
        margin = min(self._settings.token_refresh_margin_s, expires_in * 0.1)
        return CachedToken(result["access_token"], now + expires_in, now + expires_in - margin)

    def _app(self, provider: ResolvedProvider) -> msal.ConfidentialClientApplication:
        # Keyed on the config version: a new secret or certificate is a new version, so a new app.
        key = provider.token_key
        app = self._apps.get(key)
        if app is None:
            app = confidential_app(provider.client_id, provider.msal_credential, provider.azure_tenant,
                                   provider.cloud, self._http)
            self._apps[key] = app
        return app
