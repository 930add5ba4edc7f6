"""HTTP to tenants' webhook endpoints: safe to point anywhere, and aiohttp's errors become our answers here.

A tenant chooses the URL, so the platform must not become a way into its own network:
- only https, unless `webhook_allow_http`;
- the address connected to is checked when connecting, after DNS (a name that resolved to a public
  address at save time and to 127.0.0.1 now is refused): loopback, private, link-local, multicast,
  reserved and unspecified ranges (IPv4-mapped IPv6 too) are refused unless
  `webhook_allow_private_addresses`. aiohttp skips the resolver for IP literals, so those are checked
  on the URL before the request;
- redirects are not followed (a 3xx is a failed attempt), each request has a total timeout, and at
  most `webhook_response_max_bytes` of the answer are read.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.errors import ValidationFailed
from shared.settings import Settings

URL_MAX_CHARS = 2048
_USER_AGENT = "tenantmail-webhooks/1"


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What one attempt got: the endpoint's status code, or why there was none."""

    status: int | None
    error: str | None
    latency_ms: float

    @property
    def delivered(self) -> bool:
        """A 2xx: the endpoint took the event."""
        return self.status is not None and 200 <= self.status < 300


def address_allowed(address: str, settings: Settings) -> bool:
    """False for loopback, private, link-local and other non-public addresses, unless the settings allow them."""
    if settings.webhook_allow_private_addresses:
        return True
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified)


def check_url(url: object, settings: Settings, field: str = "url") -> str:
    """The URL if an endpoint may have it (scheme, host, no credentials, an IP literal's range); 422 otherwise."""
    if not isinstance(url, str) or not url or len(url) > URL_MAX_CHARS:
        raise ValidationFailed(field, f"must be a URL of 1-{URL_MAX_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValidationFailed(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationFailed(field, "is not a valid URL") from None
    allowed = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise ValidationFailed(field, f"must use {' or '.join(allowed)}")
    if not parts.hostname or parts.username is not None or parts.password is not None or parts.fragment:
        raise ValidationFailed(field, "must have a host and no credentials or fragment")
    if port == 0:
        raise ValidationFailed(field, "must not use port 0")
    if _literal(parts.hostname) and not address_allowed(parts.hostname, settings):
        raise ValidationFailed(field, "must not point at a loopback, private or link-local address")
    return url


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's resolver, then drops every address `address_allowed` refuses."""

    def __init__(self, settings: Settings) -> None:
        self._inner = DefaultResolver()
        self._settings = settings

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = [r for r in await self._inner.resolve(host, port, family)
                   if address_allowed(r["host"], self._settings)]
        if not results:
            raise OSError(f"{host} resolves only to addresses webhooks may not reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The session webhook deliveries go out on (create it inside the loop that will use it)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(settings), use_dns_cache=False, limit=64)
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s))


async def post_event(session: aiohttp.ClientSession, settings: Settings, url: str, headers: dict[str, str],
                     body: bytes) -> WebhookAnswer:
    """POST one signed event; never raises for what the network or the endpoint did."""
    started = time.monotonic()
    try:
        check_url(url, settings)
        async with session.post(url, data=body, headers={**headers, "user-agent": _USER_AGENT},
                                allow_redirects=False) as resp:
            await resp.content.read(settings.webhook_response_max_bytes)  # the rest is dropped with the connection
            return _answer(started, resp.status, None if resp.status < 300 else f"HTTP {resp.status}")
    except ValidationFailed as exc:
        return _answer(started, None, f"refused: {exc.reason}")
    except aiohttp.ClientConnectorError as exc:
        return _answer(started, None, f"cannot connect: {_reason(exc)}")
    except TimeoutError:
        return _answer(started, None, f"no answer within {settings.webhook_timeout_s} s")
    except aiohttp.ClientError as exc:
        return _answer(started, None, f"{type(exc).__name__}: {_reason(exc)}")


def _answer(started: float, status: int | None, error: str | None) -> WebhookAnswer:
    return WebhookAnswer(status, error[:500] if error else None, (time.monotonic() - started) * 1000)


def _reason(exc: Any) -> str:
    return str(getattr(exc, "os_error", None) or exc)[:300]
