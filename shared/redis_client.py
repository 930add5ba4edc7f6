"""Every Redis client tenantmail opens, built from one URL: a single server or a Sentinel group.

`REDIS_URL` (and `BROKER_URL`, which defaults to it) takes either form:

    redis://[[user]:password@]host:6379[/db]          rediss:// for TLS, unix:// for a socket
    sentinel://[[user]:password@]host1:26379[;sentinel://host2:26379 ...][/db]?master_name=mymaster

The Sentinel form is kombu's own broker syntax (sentinels separated by `;`) with the group's name
carried in the URL, so one value serves the token cache, throttles and send marks (redis-py's
`Sentinel.master_for`) and the Celery broker (kombu's sentinel transport, which wants the name as the
`master_name` transport option: `celery_broker()` moves it there). The password is the master's;
the sentinels themselves are reached without one. Clients built here follow a failover on their
own: a connection error makes the pool ask the sentinels for the master again.

Nothing connects at construction; the first command does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis
import redis.asyncio as redis_async
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from shared.errors import ConfigurationError

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
# What "Redis is not there right now" raises: refused, reset, timed out, no master known to the
# sentinels (MasterNotFoundError is a ConnectionError), or a demoted master during a failover.
UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


@dataclass(frozen=True)
class SentinelGroup:
    """A parsed Sentinel URL: where the sentinels are and which master group to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def master_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the master (the sentinels take none of them)."""
        return {"db": self.db, "username": self.username, "password": self.password}

    def describe(self) -> str:
        """Where it is, without the password (for logs and `tenantmail doctor`)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel group {self.master_name!r} via {hosts}, db {self.db}"


def is_sentinel(url: str) -> bool:
    """Whether the URL names a Sentinel group."""
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelGroup:
    """Parse `sentinel://…;sentinel://…/db?master_name=NAME` (ConfigurationError when malformed)."""
    hosts: list[tuple[str, int]] = []
    found: dict[str, str] = {}
    for part in url.split(";"):
        split = urlsplit(part.strip())
        if split.scheme != SENTINEL_SCHEME or not split.hostname:
            raise ConfigurationError(f"each ;-separated part of a Sentinel URL must be sentinel://host:port, "
                                     f"not {split.scheme or '?'}://…")
        hosts.append((split.hostname, split.port or DEFAULT_SENTINEL_PORT))
        for name, value in (("username", split.username), ("password", split.password),
                            ("db", split.path.strip("/")), *_query(split.query)):
            if value:
                found.setdefault(name, value)
    if "master_name" not in found:
        raise ConfigurationError("a Sentinel URL needs the group's name: …?master_name=mymaster")
    if not found.get("db", "0").isdigit():
        raise ConfigurationError("the database of a Sentinel URL must be a number (…:26379/0)")
    return SentinelGroup(tuple(hosts), found["master_name"], int(found.get("db", "0")),
                         found.get("username"), found.get("password"))


def _query(query: str) -> list[tuple[str, str]]:
    parsed = parse_qs(query)
    unknown = set(parsed) - {"master_name"}
    if unknown:
        raise ConfigurationError(f"unknown option(s) in a Sentinel URL: {', '.join(sorted(unknown))}")
    return [(k, v[-1]) for k, v in parsed.items()]


def describe(url: str) -> str:
    """The URL without its password, or the Sentinel group it names."""
    if is_sentinel(url):
        return parse_sentinel_url(url).describe()
    split = urlsplit(url)
    if split.password is None:
        return url
    return url.replace(f":{split.password}@", ":***@", 1)


def _sentinel_options(timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}


def _options(timeout_s: float, retry: Retry | AsyncRetry) -> dict[str, Any]:
    return {**_sentinel_options(timeout_s), "retry": retry}


# Backoff between retries of one command: 8 of them ride out a Sentinel failover (a few seconds).
_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def sync_client(url: str, *, timeout_s: float = 10.0, retries: int = 8) -> redis.Redis:
    """A blocking client (thread-safe pool) for a server or a Sentinel group's master."""
    opts = _options(timeout_s, Retry(_BACKOFF, retries))
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **opts)
    group = parse_sentinel_url(url)
    sentinel = Sentinel(list(group.sentinels),  # type: ignore[no-untyped-call]
                        sentinel_kwargs=_sentinel_options(timeout_s))
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        group.master_name, connection_class=_SentinelConnection, **group.master_kwargs(), **opts)
    return client


# redis-py reconnects a dropped connection (a retry, a command after a failover) to the address it
# had, not to the master the sentinels name now (redis/redis-py#3874, open): without these a client
# keeps knocking at the dead master until its retries run out. Each (re)connect asks the sentinels.
class _SentinelConnection(SentinelManagedConnection):
    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _AsyncSentinelConnection(AsyncSentinelConnection):
    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _BlockingSentinelPool(AsyncSentinelPool, redis_async.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of failing, as the
    worker's runtime needs (a burst must not fail after Graph accepted a message)."""


def async_client(url: str, *, timeout_s: float = 10.0, retries: int = 8, max_connections: int | None = None,
                 wait_for_connection_s: float | None = None) -> redis_async.Redis:
    """An asyncio client for a server or a Sentinel group's master.

    With `max_connections`, the pool holds at most that many and a command waits up to
    `wait_for_connection_s` for one (a blocking pool) instead of failing."""
    opts = _options(timeout_s, AsyncRetry(_BACKOFF, retries))  # redis.asyncio needs its own Retry
    if max_connections is not None:
        opts.update(max_connections=max_connections, timeout=wait_for_connection_s)
    if not is_sentinel(url):
        if max_connections is None:
            return redis_async.Redis.from_url(url, **opts)
        return redis_async.Redis(connection_pool=redis_async.BlockingConnectionPool.from_url(url, **opts))
    group = parse_sentinel_url(url)
    sentinel = AsyncSentinel(list(group.sentinels),  # type: ignore[no-untyped-call]
                             sentinel_kwargs=_sentinel_options(timeout_s))
    pool_class = AsyncSentinelPool if max_connections is None else _BlockingSentinelPool
    client: redis_async.Redis = sentinel.master_for(
        group.master_name, connection_pool_class=pool_class, connection_class=_AsyncSentinelConnection,
        **group.master_kwargs(), **opts)
    return client


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options kombu needs for `url`.

    A Sentinel URL becomes kombu's `sentinel://h1:p1/db;sentinel://h2:p2/db` with the master's
    credentials on every part (kombu fails over between the parts) and `master_name` as a
    transport option; any other URL passes through unchanged."""
    if not is_sentinel(url):
        return url, {}
    group = parse_sentinel_url(url)
    auth = ""
    if group.password is not None:
        auth = f"{quote(group.username or '', safe='')}:{quote(group.password, safe='')}@"
    broker = ";".join(f"{SENTINEL_SCHEME}://{auth}{host}:{port}/{group.db}" for host, port in group.sentinels)
    return broker, {"master_name": group.master_name}
