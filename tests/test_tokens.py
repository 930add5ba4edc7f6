"""transport.tokens.TokenProvider against the real emulator (Entra ID) and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio as redis_async
from cryptography.fernet import Fernet

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.clouds import resolve_cloud
from shared.errors import TokenError
from shared.providers import ResolvedProvider
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.tokens import TokenProvider

UNKNOWN_TENANT = "00000000-1111-4222-8333-444444444444"


def _settings(emulator: Any) -> Settings:
    return Settings(authority_override=emulator.base_url, graph_base_override=emulator.graph_base_url,
                    ca_bundle=str(emulator.ca_path), http_timeout_s=10.0)


def _provider(emulator: Any, *, secret: str = DEMO_CLIENT_SECRET, azure_tenant: str = DEMO_TENANT_ID,
              version: int = 1) -> ResolvedProvider:
    return ResolvedProvider(
        tenant_id="acme", version=version, kind="graph", sender_address=DEMO_SENDER, sender_name=None,
        reply_to=None, azure_tenant=azure_tenant, client_id=DEMO_CLIENT_ID,
        cloud=resolve_cloud("global", _settings(emulator)), credential=secret,
    )


def _token_requests(emulator: Any, tenant: str = DEMO_TENANT_ID) -> int:
    return int(emulator.counters()["token_requests"].get(tenant, 0))


def _run(emulator: Any, redis_url: str, scenario: Callable[..., Awaitable[Any]]) -> Any:
    """Run `scenario(p1, p2, box)`: two TokenProviders (two "processes") sharing one Redis and one key."""
    box = SecretBox([Fernet.generate_key().decode()])
    settings = _settings(emulator)

    async def main() -> Any:
        r1 = redis_async.Redis.from_url(redis_url)
        r2 = redis_async.Redis.from_url(redis_url)
        with ThreadPoolExecutor(4) as ex1, ThreadPoolExecutor(4) as ex2:
            try:
                return await scenario(TokenProvider(r1, redis.Redis.from_url(redis_url), box, settings, ex1),
                                      TokenProvider(r2, redis.Redis.from_url(redis_url), box, settings, ex2))
            finally:
                await r1.aclose()
                await r2.aclose()
    return asyncio.run(main())


def test_tokens_two_processes_share_one_token_request(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[str, str, str]:
        first = await p1.get(provider)
        return first, await p2.get(provider), await p1.get(provider)

    a, b, c = _run(emulator, redis_url, scenario)

    assert a == b == c and a.count(".") == 2  # one JWT
    assert _token_requests(emulator) == 1


def test_tokens_concurrent_gets_across_processes_make_one_request(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[list[str], int]:
        tokens = await asyncio.gather(*(p.get(provider) for _ in range(10) for p in (p1, p2)))
        return list(tokens), p1.msal_requests + p2.msal_requests

    tokens, msal_requests = _run(emulator, redis_url, scenario)

    assert len(tokens) == 20 and len(set(tokens)) == 1
    assert msal_requests == 1
    assert _token_requests(emulator) == 1


def test_tokens_wrong_secret_is_permanent_and_remembered(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator, secret="not-the-secret")

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[TokenError, int, TokenError]:
        with pytest.raises(TokenError) as first:
            await p1.get(provider)
        requests_after_first = _token_requests(emulator)
        with pytest.raises(TokenError) as second:
            await p1.get(provider)
        return first.value, requests_after_first, second.value

    first, requests_after_first, second = _run(emulator, redis_url, scenario)

    assert first.code == "AADSTS7000215"
    assert first.request_id  # Entra's trace id travels with the error
    assert requests_after_first == 1
    assert second.code == "AADSTS7000215"
    assert _token_requests(emulator) == 1  # the second call inside 30 s did not reach Entra ID


def test_tokens_invalidate_then_get_requests_a_new_token(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[str, str, str]:
        old = await p1.get(provider)
        await p1.invalidate(provider, old)
        fresh = await p1.get(provider)
        return old, fresh, await p2.get(provider)

    old, fresh, seen_by_other = _run(emulator, redis_url, scenario)

    assert fresh != old
    assert seen_by_other == fresh  # the other process reads the replacement from Redis
    assert _token_requests(emulator) == 2


def test_tokens_invalidate_of_a_stale_token_keeps_the_current_one(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[str, str]:
        current = await p1.get(provider)
        await p2.invalidate(provider, "some-older-token")
        return current, await p2.get(provider)

    current, after = _run(emulator, redis_url, scenario)

    assert after == current
    assert _token_requests(emulator) == 1


def test_tokens_are_encrypted_in_redis(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> str:
        return await p1.get(provider)

    token = _run(emulator, redis_url, scenario)

    r = redis.Redis.from_url(redis_url)
    try:
        keys = r.keys("tm:tok:*")
        assert keys == [f"tm:tok:{provider.token_key}".encode()]
        raw = r.get(keys[0])
        assert raw and token.encode() not in raw
        assert token.split(".")[1].encode() not in raw  # not even the claims part
        assert 0 < r.ttl(keys[0]) <= 3600
    finally:
        r.close()


def test_tokens_key_includes_provider_version(emulator: Any, redis_url: str) -> None:
    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[str, str]:
        return await p1.get(_provider(emulator, version=1)), await p1.get(_provider(emulator, version=2))

    v1, v2 = _run(emulator, redis_url, scenario)

    assert v1 != v2
    assert _token_requests(emulator) == 2


def test_tokens_unknown_tenant_is_aadsts90002(emulator: Any, redis_url: str) -> None:
    provider = _provider(emulator, azure_tenant=UNKNOWN_TENANT)

    async def scenario(p1: TokenProvider, p2: TokenProvider) -> tuple[TokenError, int, int]:
        with pytest.raises(TokenError) as first:
            await p1.get(provider)
        discovery_after_first = int(emulator.counters()["discovery_requests"])
        with pytest.raises(TokenError):
            await p1.get(provider)
        return first.value, discovery_after_first, int(emulator.counters()["discovery_requests"])

    error, discovery_after_first, discovery_after_second = _run(emulator, redis_url, scenario)

    assert error.code == "AADSTS90002"
    assert discovery_after_first >= 1
    assert discovery_after_second == discovery_after_first
    assert _token_requests(emulator, UNKNOWN_TENANT) == 0
